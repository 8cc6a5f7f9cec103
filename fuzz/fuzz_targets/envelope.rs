//! The record reader of `weir run --input`: any bytes as a JSON Lines file (values or
//! records, auto-detected). Never a panic or an error: every non-blank line is one record,
//! and a line that cannot be a record carries its own bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::source::file::{FileSource, InputFormat};
use weir::source::Payload;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("weir-fuzz-envelope-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("input.jsonl");
    std::fs::write(&path, data).expect("write the input");
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    let non_blank = lines
        .iter()
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .count();
    let mut n = 0;
    for r in FileSource::open(&path, InputFormat::Auto, "t").expect("open") {
        let r = r.expect("a JSON Lines file never fails to read");
        n += 1;
        let line = lines[r.line as usize - 1];
        if let Payload::Invalid { bytes, reason } = &r.value {
            assert_eq!(bytes.as_slice(), line, "{reason}");
            assert!(!reason.is_empty());
        }
        assert!(r.offset >= 0 && r.partition <= i32::MAX as u32);
    }
    assert_eq!(n, non_blank, "one record per non-blank line");
});
