//! The floor: the least an HTTP server on this runtime can do per request.
//!
//! Same runtime, ring setup, pinning and `SO_REUSEPORT` listeners as leftpad, but no
//! parsing, no routing, no logging: it counts request ends (`\r\n\r\n`) in what it reads
//! and answers each with one fixed response, byte-for-byte the size of leftpad's answer to
//! the benchmark request. leftpad's overhead is measured against it.
//!
//! `cargo run --release --example floor -- --listen 127.0.0.1:8081`

use std::net::SocketAddr;
use std::time::SystemTime;

use clap::Parser;
use leftpad::app::handler::App;
use leftpad::http::conn::Conn;
use leftpad::http::date::HttpDate;
use leftpad::http::request::Limits;
use leftpad::shell::config::{Driver, UringSetup};
use leftpad::shell::runtime::Runtime;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[arg(long, value_enum, default_value_t = Driver::Auto)]
    driver: Driver,
    #[arg(long, value_enum, default_value_t = UringSetup::Defer)]
    uring_setup: UringSetup,
    /// The request whose leftpad answer sets the response size.
    #[arg(long, default_value = "/v1/leftpad/?str=test&len=50&chr=*")]
    target: String,
    /// Answer like leftpad answers an HTTP/1.0 keep-alive client (ab): with
    /// `Connection: keep-alive`.
    #[arg(long)]
    http10_keep_alive: bool,
}

fn main() {
    let args = Args::parse();
    let response: &'static [u8] = leftpad_answer(&args.target, args.http10_keep_alive).leak();
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let threads: Vec<_> = (0..args.workers)
        .map(|i| {
            let listener = bind(args.listen);
            let cpu = cpus.get(i % cpus.len().max(1)).copied();
            let (driver, setup) = (args.driver, args.uring_setup);
            std::thread::spawn(move || {
                if let Some(cpu) = cpu {
                    core_affinity::set_for_current(cpu);
                }
                let mut runtime = Runtime::build(driver, setup).expect("runtime");
                eprintln!("floor: worker {i} on {}", runtime.report());
                runtime.block_on(serve(listener, response));
            })
        })
        .collect();
    eprintln!(
        "floor: listening on http://{}, {} byte responses",
        args.listen,
        response.len()
    );
    for t in threads {
        let _ = t.join();
    }
}

/// leftpad's full answer to `target`, computed once by the real core.
fn leftpad_answer(target: &str, http10_keep_alive: bool) -> Vec<u8> {
    let request = if http10_keep_alive {
        format!("GET {target} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    } else {
        format!("GET {target} HTTP/1.1\r\nHost: floor\r\n\r\n")
    };
    let limits = Limits {
        max_head_size: 8192,
        max_headers: 100,
        max_body_size: 0,
    };
    let date = HttpDate::new(SystemTime::now());
    let mut out = Vec::new();
    Conn::new().process(
        request.as_bytes(),
        &mut out,
        &mut Vec::new(),
        &mut App::new(1024),
        &limits,
        date.as_bytes(),
    );
    out
}

fn bind(addr: SocketAddr) -> std::net::TcpListener {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    socket.set_nonblocking(true).expect("nonblocking");
    socket.bind(&addr.into()).expect("bind");
    socket.listen(4096).expect("listen");
    socket.into()
}

async fn serve(listener: std::net::TcpListener, response: &'static [u8]) {
    let listener = monoio::net::TcpListener::from_std(listener).expect("listener");
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            monoio::spawn(connection(stream, response));
        }
    }
}

async fn connection(mut stream: monoio::net::TcpStream, response: &'static [u8]) {
    let _ = stream.set_nodelay(true);
    let mut input = Vec::with_capacity(4096);
    let mut output = Vec::with_capacity(4096);
    loop {
        let len = input.len();
        let (result, buf) = stream.read(input.slice_mut(len..)).await;
        input = buf.into_inner();
        match result {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        // Answer each complete request; keep a partial one's bytes for the next read.
        let mut answered_up_to = 0;
        let mut i = 0;
        while i + 4 <= input.len() {
            if &input[i..i + 4] == b"\r\n\r\n" {
                output.extend_from_slice(response);
                answered_up_to = i + 4;
                i += 4;
            } else {
                i += 1;
            }
        }
        input.drain(..answered_up_to);
        if input.len() == input.capacity() {
            input.clear();
        }
        if !output.is_empty() {
            let (result, buf) = stream.write_all(output).await;
            output = buf;
            output.clear();
            if result.is_err() {
                return;
            }
        }
    }
}
