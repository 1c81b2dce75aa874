//! The command line: every setting is a flag, also readable from `LEFTPAD_<FLAG>`.
//!
//! Values are checked here, so a bad one stops the program before anything starts, with
//! clap's exit code 2 and a message naming the flag.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::http::request::{Limits, MAX_HEADERS_CAP};
use crate::telemetry::accesslog::Target;
use crate::telemetry::statsd;

/// `--log-buffer`'s default: 64 KiB, as README.md documents it. Larger writes cost the
/// kernel less per line (45 ns in 256 KiB writes against 64 in 64 KiB ones on the AMD VM,
/// for +0.4 MB per busy worker); ARCHITECTURE.md, "Access-log writes: a writer thread per
/// worker", says when `--log-buffer 262144` pays.
pub const DEFAULT_LOG_BUFFER: u64 = 64 * 1024;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "leftpad",
    version,
    about = "A thread-per-core io_uring left-pad HTTP service",
    long_about = "A thread-per-core io_uring left-pad HTTP service.\n\n\
        GET /v1/leftpad/?str=test&len=50&chr=* answers {\"str\":\"****...test\"}.\n\
        Every option can also be set by an environment variable: --max-len is LEFTPAD_MAX_LEN.\n\
        Durations are seconds (10) or take a unit (10s, 500ms, 2m); sizes are bytes."
)]
pub struct Config {
    /// Address of the public HTTP listener (HOST:PORT).
    #[arg(long, env = "LEFTPAD_LISTEN", default_value = "0.0.0.0:8080", value_parser = parse_addr)]
    pub listen: SocketAddr,

    /// Worker threads, one per CPU, each pinned to its CPU [default: the CPUs this process may use].
    #[arg(long, env = "LEFTPAD_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// I/O driver: io_uring, epoll, or auto (io_uring, falling back to epoll when refused).
    #[arg(long, env = "LEFTPAD_DRIVER", value_enum, default_value_t = Driver::Auto)]
    pub driver: Driver,

    /// Largest `len` a request may ask for (in characters).
    #[arg(long, env = "LEFTPAD_MAX_LEN", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub max_len: u64,

    /// Largest request head (request line and headers), in bytes: 431 beyond it, or 414
    /// when the request line alone is longer.
    #[arg(long, env = "LEFTPAD_MAX_HEAD_SIZE", default_value_t = 8192,
          value_parser = clap::value_parser!(u64).range(256..=1_048_576))]
    pub max_head_size: u64,

    /// Most headers a request may have: 431 beyond it.
    #[arg(long, env = "LEFTPAD_MAX_HEADERS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=MAX_HEADERS_CAP as u64))]
    pub max_headers: u64,

    /// Largest request body (read and discarded), in bytes: 413 beyond it.
    #[arg(long, env = "LEFTPAD_MAX_BODY_SIZE", default_value_t = 1_048_576)]
    pub max_body_size: u64,

    /// Most open connections for the whole process; new ones beyond it get 503 and are closed.
    #[arg(long, env = "LEFTPAD_MAX_CONNECTIONS", default_value_t = 16384,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections: u64,

    /// Time a client has to send a whole request head, from its first byte (slowloris guard).
    #[arg(long, env = "LEFTPAD_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Time a keep-alive connection may stay idle between requests (also the most time
    /// between two reads of a request body).
    #[arg(long, env = "LEFTPAD_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Time a client has to take in a response; one that does not read is dropped.
    #[arg(long, env = "LEFTPAD_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// On SIGTERM/SIGINT, how long requests in flight may take before connections are cut.
    #[arg(long, env = "LEFTPAD_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Access log: a file path (appended to; SIGHUP reopens it), `-` for standard output,
    /// or `off`.
    #[arg(long, env = "LEFTPAD_ACCESS_LOG", default_value = "-", value_parser = parse_access_log)]
    pub access_log: ::std::option::Option<Target>,

    /// Bytes of log lines a worker buffers before writing them out.
    #[arg(long, env = "LEFTPAD_LOG_BUFFER", default_value_t = DEFAULT_LOG_BUFFER,
          value_parser = clap::value_parser!(u64).range(1024..=64 << 20))]
    pub log_buffer: u64,

    /// Milliseconds after which buffered log lines are written out anyway.
    #[arg(long, env = "LEFTPAD_LOG_FLUSH_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub log_flush_ms: u64,

    /// StatsD server (HOST:PORT, UDP), or `off`.
    #[arg(long, env = "LEFTPAD_STATSD", default_value = "127.0.0.1:8125", value_parser = parse_statsd)]
    pub statsd: ::std::option::Option<SocketAddr>,

    /// Prefix of every metric name (`:`, `|`, `@` become `_`).
    #[arg(long, env = "LEFTPAD_STATSD_PREFIX", default_value = "leftpad")]
    pub statsd_prefix: String,

    /// Fraction of metric events sent (0 < rate <= 1); kept lines carry `|@rate`.
    #[arg(long, env = "LEFTPAD_STATSD_SAMPLE_RATE", default_value_t = 0.5, value_parser = parse_rate)]
    pub statsd_sample_rate: f64,

    /// Largest StatsD datagram, in bytes (lines are joined with newlines up to this).
    #[arg(long, env = "LEFTPAD_STATSD_MAX_PACKET", default_value_t = 1432,
          value_parser = clap::value_parser!(u64).range(64..=65507))]
    pub statsd_max_packet: u64,

    /// Milliseconds after which a partly filled StatsD datagram is sent anyway.
    #[arg(long, env = "LEFTPAD_STATSD_FLUSH_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub statsd_flush_ms: u64,

    /// Client-side aggregation: counters summed per flush and sent once (exact whatever
    /// the sample rate), sampled values packed into multi-value lines; `off` sends one
    /// line per event, as the original service did.
    #[arg(long, env = "LEFTPAD_STATSD_AGGREGATE", value_enum, default_value_t = OnOff::On)]
    pub statsd_aggregate: OnOff,

    /// Admin listener for /debug/pprof/ profiles and /debug/vars (HOST:PORT), or `off`.
    /// Keep it on loopback: profiles are not for the public.
    #[arg(long, env = "LEFTPAD_ADMIN", default_value = "127.0.0.1:6060", value_parser = parse_admin_flag)]
    pub admin: ::std::option::Option<SocketAddr>,

    /// Serve Prometheus /metrics alone on this address (HOST:PORT), for a scraper on
    /// another host while the admin listener stays on loopback; `off` for none (/metrics
    /// is on the admin listener too).
    #[arg(long, env = "LEFTPAD_METRICS", default_value = "off", value_parser = parse_metrics_flag)]
    pub metrics: ::std::option::Option<SocketAddr>,

    /// Take over from the leftpad running on the same --listen address (zero-downtime
    /// restart): join its SO_REUSEPORT group instead of refusing an address in use (also
    /// on --admin and --metrics), then SIGTERM the old process once this one's startup
    /// line is out; the old one drains. Both must run as the same user. Best with
    /// net.ipv4.tcp_migrate_req=1, so the old listeners' queued connections move here.
    #[arg(long, env = "LEFTPAD_TAKEOVER", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub takeover: bool,

    /// Heap profiling: sample on average one allocation per this many bytes allocated
    /// (Go's MemProfileRate), for /debug/pprof/heap and /allocs; 0 turns it off.
    #[arg(long, env = "LEFTPAD_HEAP_PROFILE_RATE", default_value_t = crate::profile::heap::DEFAULT_RATE)]
    pub heap_profile_rate: u64,

    /// io_uring setup flags (for benchmarking the choice; see ARCHITECTURE.md).
    #[arg(long, env = "LEFTPAD_URING_SETUP", value_enum, default_value_t = UringSetup::Defer, hide = true)]
    pub uring_setup: UringSetup,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Driver {
    Auto,
    #[value(name = "io-uring")]
    IoUring,
    Epoll,
}

/// How the io_uring instance is set up (see ARCHITECTURE.md for the measurements).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UringSetup {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: completions run only when the worker waits.
    Defer,
    /// `COOP_TASKRUN | TASKRUN_FLAG`: no inter-processor interrupts for completions.
    Coop,
    /// The kernel's defaults (monoio's own).
    Plain,
}

impl Config {
    /// The StatsD settings, or `None` when StatsD is off.
    pub fn statsd(&self) -> Option<statsd::Settings> {
        self.statsd.map(|addr| statsd::Settings {
            aggregate: self.statsd_aggregate == OnOff::On,
            addr,
            prefix: self.statsd_prefix.clone(),
            sample_rate: self.statsd_sample_rate,
            max_packet: self.statsd_max_packet as usize,
        })
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_head_size: self.max_head_size as usize,
            max_headers: self.max_headers as usize,
            max_body_size: self.max_body_size,
        }
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let hint = "expected HOST:PORT, such as 0.0.0.0:8080 or [::1]:8080";
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("cannot use '{text}' as an address ({e}): {hint}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("'{text}' resolves to no address: {hint}"))
}

fn parse_access_log(text: &str) -> Result<Option<Target>, String> {
    match text {
        "off" => Ok(None),
        "-" => Ok(Some(Target::Stdout)),
        "" => Err("expected a file path, - for standard output, or off".into()),
        path => Ok(Some(Target::File(path.into()))),
    }
}

fn parse_statsd(text: &str) -> Result<Option<SocketAddr>, String> {
    if text == "off" {
        return Ok(None);
    }
    parse_addr(text)
        .map(Some)
        .map_err(|e| format!("{e}, or off to send no metrics"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 1.0 => Ok(rate),
        _ => Err(format!(
            "'{text}' is not a rate: use a number above 0 and at most 1, such as 0.5"
        )),
    }
}

/// A duration: plain seconds (`10`, `0.5`) or a number with a unit (`ms`, `s`, `m`, `h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "'{text}' has an unknown unit: use ms, s, m or h (e.g. 10s, 500ms)"
            ))
        }
    };
    let value: f64 = number.parse().map_err(|_| {
        format!("'{text}' is not a duration: use seconds (10) or a unit (10s, 500ms)")
    })?;
    let seconds = value * scale;
    if !(seconds > 0.0 && seconds <= 86_400.0 * 365.0) {
        return Err(format!(
            "'{text}' must be more than zero and at most a year"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A switch given as `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// `--admin`: an address, or `off`.
fn parse_admin_flag(text: &str) -> Result<Option<SocketAddr>, String> {
    parse_optional_addr(text, "127.0.0.1:6060")
}

/// `--metrics`: an address, or `off`.
fn parse_metrics_flag(text: &str) -> Result<Option<SocketAddr>, String> {
    parse_optional_addr(text, "0.0.0.0:9090")
}

/// A listener's address (`HOST:PORT`, resolved), or `None` for `off`; `example` goes in
/// the message for anything else.
fn parse_optional_addr(text: &str, example: &str) -> Result<Option<SocketAddr>, String> {
    if text == "off" {
        return Ok(None);
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(Some)
        .ok_or_else(|| format!("cannot use '{text}': expected HOST:PORT such as {example}, or off"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("1.2.3s").is_err());
    }

    #[test]
    fn defaults() {
        let c = Config::try_parse_from(["leftpad"]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.max_len, 1024);
        assert_eq!(c.max_head_size, 8192);
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.driver, Driver::Auto);
        assert!(!c.takeover);
    }

    #[test]
    fn takeover_is_a_switch() {
        assert!(
            Config::try_parse_from(["leftpad", "--takeover"])
                .unwrap()
                .takeover
        );
        assert!(Config::try_parse_from(["leftpad", "--takeover=false"]).is_err());
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = Config::try_parse_from(["leftpad", "--max-len", "abc"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--max-len"));
        let err = Config::try_parse_from(["leftpad", "--idle-timeout", "5y"]).unwrap_err();
        assert!(err.to_string().contains("--idle-timeout"));
        let err = Config::try_parse_from(["leftpad", "--listen", "nonsense"]).unwrap_err();
        assert!(err.to_string().contains("--listen"));
    }

    #[test]
    fn log_and_statsd_settings() {
        let c = Config::try_parse_from(["leftpad"]).unwrap();
        assert_eq!(c.access_log, Some(Target::Stdout));
        assert_eq!(c.statsd, Some("127.0.0.1:8125".parse().unwrap()));
        assert_eq!(c.statsd_sample_rate, 0.5);
        let c =
            Config::try_parse_from(["leftpad", "--access-log", "off", "--statsd", "off"]).unwrap();
        assert_eq!((c.access_log, c.statsd), (None, None));
        let c = Config::try_parse_from(["leftpad", "--access-log", "/tmp/x.log"]).unwrap();
        assert_eq!(c.access_log, Some(Target::File("/tmp/x.log".into())));
        for (flag, bad) in [
            ("--statsd-sample-rate", "0"),
            ("--statsd-sample-rate", "1.5"),
            ("--statsd", "nowhere"),
        ] {
            let err = Config::try_parse_from(["leftpad", flag, bad]).unwrap_err();
            assert!(err.to_string().contains(flag), "{err}");
        }
    }

    #[test]
    fn help_is_consistent() {
        Config::command().debug_assert();
    }
}
