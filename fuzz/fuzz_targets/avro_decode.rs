//! The Avro decoder: bare datums and Confluent frames, against a fixed reader schema and
//! through writer-to-reader resolution. The first byte picks the case. Never a panic;
//! where Weir has a fast decoder for flat records, it must agree with apache-avro's.
#![no_main]

use apache_avro::Schema;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use weir::pipeline::ValueFormat;
use weir::schema::codec::{into_row, Decoder};

struct Decoders {
    /// Nested records, arrays, maps, enum, decimal, fixed, uuid, union: apache-avro's path.
    complex: Decoder,
    /// A flat record: Weir's fast path.
    flat: Decoder,
    /// Confluent frames: id 2 is the reader schema, id 1 an older writer resolved to it.
    framed: Decoder,
}

fn schema(text: &str) -> Schema {
    Schema::parse_str(text).expect("a golden schema parses")
}

fn decoders() -> &'static Decoders {
    static D: OnceLock<Decoders> = OnceLock::new();
    D.get_or_init(|| {
        let complex = schema(include_str!("../../tests/golden/complex_types/input.avsc"));
        let v1 = schema(include_str!("../../tests/golden/schema_evolution/v1.avsc"));
        let v2 = schema(include_str!("../../tests/golden/schema_evolution/v2.avsc"));
        Decoders {
            complex: Decoder::new(ValueFormat::AvroRaw, complex, vec![]),
            flat: Decoder::new(ValueFormat::AvroRaw, v2.clone(), vec![]),
            framed: Decoder::new(ValueFormat::Avro, v2.clone(), vec![(1, v1), (2, v2)]),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let d = decoders();
    match which % 3 {
        0 => {
            let _ = d.complex.decode_row(bytes, &[true; 9]);
        }
        1 => {
            let fast = d.flat.decode_row(bytes, &[true; 4]);
            let slow = d.flat.decode(bytes).and_then(into_row);
            match (&fast, &slow) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "fast and apache-avro decoders disagree"),
                (Err(_), Err(_)) => {}
                _ => panic!("fast {fast:?} vs apache-avro {slow:?}"),
            }
        }
        _ => {
            let _ = d.framed.decode_row(bytes, &[true; 4]);
            let _ = d.framed.unknown_writer_id(bytes);
        }
    }
});
