use super::*;
use pprof::protos::Message;

fn named(name: &str) -> Frame {
    Frame::Named {
        name: name.to_owned(),
        file: "",
    }
}

#[test]
fn a_reference_decoder_reads_what_the_builder_writes() {
    let mut b = Builder::new(
        &[("alloc_objects", "count"), ("alloc_space", "bytes")],
        ("space", "bytes"),
        524288,
    );
    b.default_sample_type("alloc_space");
    b.comment("a comment");
    b.time(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1),
        Duration::from_millis(1500),
    );
    b.add_sample(
        &[named("leaf"), named("main")],
        &[3, 96],
        &[("state", "idle")],
    );
    b.add_sample(&[named("other"), named("main")], &[1, -5], &[]);
    let p = pprof::protos::Profile::decode(b.encode().as_slice()).expect("valid protobuf");

    let s = |id: i64| p.string_table[id as usize].as_str();
    assert_eq!(s(0), "");
    let types: Vec<_> = p.sample_type.iter().map(|t| (s(t.ty), s(t.unit))).collect();
    assert_eq!(
        types,
        [("alloc_objects", "count"), ("alloc_space", "bytes")]
    );
    let period_type = p.period_type.as_ref().expect("period type");
    assert_eq!(
        (s(period_type.ty), s(period_type.unit), p.period),
        ("space", "bytes", 524288)
    );
    assert_eq!(s(p.default_sample_type), "alloc_space");
    assert_eq!(
        p.comment.iter().map(|&c| s(c)).collect::<Vec<_>>(),
        ["a comment"]
    );
    assert_eq!(
        (p.time_nanos, p.duration_nanos),
        (1_000_000_000, 1_500_000_000)
    );

    assert_eq!(p.sample.len(), 2);
    assert_eq!(p.sample[0].value, [3, 96]);
    assert_eq!(p.sample[1].value, [1, -5]);
    let label = &p.sample[0].label[0];
    assert_eq!((s(label.key), s(label.str)), ("state", "idle"));
    // "main" is one location and one function, shared by both samples.
    assert_eq!(p.sample[0].location_id[1], p.sample[1].location_id[1]);
    assert_eq!((p.location.len(), p.function.len()), (3, 3));
    let name_of = |location_id: u64| {
        let location = &p.location[location_id as usize - 1];
        assert_eq!(location.id, location_id);
        let function = &p.function[location.line[0].function_id as usize - 1];
        s(function.name).to_owned()
    };
    let stack: Vec<String> = p.sample[0]
        .location_id
        .iter()
        .map(|&id| name_of(id))
        .collect();
    assert_eq!(stack, ["leaf", "main"]);
}

#[test]
fn only_leading_hidden_functions_leave_the_stacks() {
    let mut b = Builder::new(&[("samples", "count")], ("cpu", "nanoseconds"), 1);
    b.trim_leading(|name| name.starts_with("alloc"));
    let stack = [
        named("alloc_inner"),
        named("alloc_outer"),
        named("caller"),
        named("alloc_in_the_middle"),
        named("main"),
    ];
    b.add_sample(&stack, &[1], &[]);
    b.add_sample(&[named("alloc_only")], &[1], &[]);
    b.add_sample(&[named("caller"), named("main")], &[1], &[]);
    assert_eq!(b.trimmed(), (1, vec![("alloc_outer".to_owned(), 1)]));
    let p = pprof::protos::Profile::decode(b.encode().as_slice()).expect("valid protobuf");
    let names = |sample: usize| -> Vec<String> {
        p.sample[sample]
            .location_id
            .iter()
            .map(|&id| {
                let location = &p.location[id as usize - 1];
                let function = &p.function[location.line[0].function_id as usize - 1];
                p.string_table[function.name as usize].clone()
            })
            .collect()
    };
    assert_eq!(names(0), ["caller", "alloc_in_the_middle", "main"]);
    assert_eq!(
        names(1),
        ["alloc_only"],
        "a stack of hidden frames stays whole"
    );
    assert_eq!(names(2), ["caller", "main"]);
}

#[inline(never)]
fn a_known_function() -> u64 {
    a_known_function as *const () as u64
}

/// Code addresses are named, and point at the main executable's mapping (the first,
/// with its file and build ID); kernel and synthetic frames get mappings of their
/// own that hold their addresses.
#[test]
fn every_location_lies_in_its_mapping() {
    let address = a_known_function();
    let mut b = Builder::new(&[("samples", "count")], ("cpu", "nanoseconds"), 1);
    b.kernel_text(0xffff_ffff_8100_0000..0xffff_ffff_8220_0000);
    let stack = [
        Frame::Kernel {
            address: 0xffff_ffff_8100_1234,
            name: "tcp_sendmsg".into(),
        },
        Frame::Code { address },
        Frame::Code { address: 0x10 }, // outside every mapping: the stack ends
        named("after"),
    ];
    b.add_sample(&stack, &[1], &[]);
    b.add_sample(&[named("a state"), named("worker 0")], &[1], &[]);
    let p = pprof::protos::Profile::decode(b.encode().as_slice()).expect("valid protobuf");
    let s = |id: i64| p.string_table[id as usize].as_str();
    let exe = std::fs::read_link("/proc/self/exe").expect("exe");
    let exe = exe.to_string_lossy();
    let main = &p.mapping[0];
    assert_eq!(
        s(main.filename),
        exe.strip_suffix(" (deleted)").unwrap_or(&exe)
    );
    assert!(s(main.build_id).len() >= 16, "a build ID");
    assert!(main.has_functions && main.has_filenames && main.has_line_numbers);
    assert_eq!(p.sample[0].location_id.len(), 2, "{:?}", p.sample[0]);
    for location in &p.location {
        let mapping = &p.mapping[location.mapping_id as usize - 1];
        assert_eq!(mapping.id, location.mapping_id);
        assert!(
            (mapping.memory_start..mapping.memory_limit).contains(&location.address),
            "{location:?} in {mapping:?}"
        );
    }
    let file_of = |location: u64| {
        s(p.mapping[p.location[location as usize - 1].mapping_id as usize - 1].filename)
    };
    assert_eq!(file_of(p.sample[0].location_id[0]), KERNEL_FILE);
    assert_eq!(file_of(p.sample[0].location_id[1]), main_file(&exe));
    assert_eq!(file_of(p.sample[1].location_id[0]), SYNTHETIC_FILE);
    let code = &p.location[p.sample[0].location_id[1] as usize - 1];
    assert_eq!(mappings::runtime_address(code.address), address);
    let function = &p.function[code.line[0].function_id as usize - 1];
    let name = s(function.name);
    assert!(name.ends_with("a_known_function"), "{name}");
}

fn main_file(exe: &str) -> &str {
    exe.strip_suffix(" (deleted)").unwrap_or(exe)
}

#[test]
fn callers_are_named_at_their_call() {
    assert_eq!(
        Frame::walked(&[0x100, 0x200], true),
        [
            Frame::Code { address: 0x100 },
            Frame::Code { address: 0x1ff }
        ]
    );
    assert_eq!(
        Frame::walked(&[0x100], false),
        [Frame::Code { address: 0xff }]
    );
}
