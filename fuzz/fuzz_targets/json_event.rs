//! The JSON event validator: any bytes, against a nested reader schema and a flat one.
//! Never a panic; an event it accepts encodes as Avro and decodes back to the same values.
#![no_main]

use apache_avro::Schema;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use weir::pipeline::ValueFormat;
use weir::schema::codec::Decoder;

fn decoders() -> &'static [(Schema, Decoder, Decoder)] {
    static D: OnceLock<Vec<(Schema, Decoder, Decoder)>> = OnceLock::new();
    D.get_or_init(|| {
        [
            include_str!("../../tests/golden/complex_types/input.avsc"),
            include_str!("../../tests/golden/schema_evolution/v2.avsc"),
        ]
        .iter()
        .map(|t| {
            let s = Schema::parse_str(t).expect("a golden schema parses");
            (
                s.clone(),
                Decoder::new(ValueFormat::Json, s.clone(), vec![]),
                Decoder::new(ValueFormat::AvroRaw, s, vec![]),
            )
        })
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let all = decoders();
    let (schema, json, raw) = &all[which as usize % all.len()];
    if let Ok(v) = json.decode_json(bytes) {
        let _ = json.decode_json_row(bytes);
        let datum = apache_avro::to_avro_datum(schema, v.clone())
            .expect("an accepted JSON event encodes with its schema");
        let back = raw.decode(&datum).expect("its encoding decodes");
        assert_eq!(back, v, "JSON -> Avro -> value changed the event");
    }
});
