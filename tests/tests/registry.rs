//! The schema registry client against a recorded-API test server: a loopback HTTP server
//! answering with the Confluent Schema Registry's documented responses (status codes,
//! content type, bodies and error codes, as in the REST API reference). No registry
//! implementation could be installed here (Confluent's and Karapace both need a JVM or a
//! Kafka cluster of their own; see the issue note).

use apache_avro::Schema;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use weir::schema::registry::{Registry, RegistryError};

const CLICK_V1: &str = r#"{"type":"record","name":"Click","namespace":"weir.test","fields":[{"name":"user","type":"string"},{"name":"amount","type":"long"}]}"#;

/// Recorded exchanges: (method, path) -> (status, body). Requests are logged.
struct Recorded {
    log: Arc<Mutex<Vec<(String, String, String)>>>,
    url: String,
}

fn serve(answers: Vec<(&'static str, String, u16, String)>) -> Recorded {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            log2.lock().unwrap().push((
                method.clone(),
                path.clone(),
                String::from_utf8_lossy(&body).into_owned(),
            ));
            let (status, text) = answers
                .iter()
                .find(|(m, p, _, _)| *m == method && *p == path)
                .map(|(_, _, s, b)| (*s, b.clone()))
                .unwrap_or((
                    404,
                    r#"{"error_code":404,"message":"HTTP 404 Not Found"}"#.into(),
                ));
            let reply = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    Recorded { log, url }
}

fn schema_answer(s: &str) -> String {
    serde_json::json!({ "schema": s }).to_string()
}

#[test]
fn fetches_schemas_by_id_once() {
    let rec = serve(vec![
        (
            "GET",
            "/schemas/ids/21".into(),
            200,
            schema_answer(CLICK_V1),
        ),
        (
            "GET",
            "/schemas/ids/404".into(),
            404,
            r#"{"error_code":40403,"message":"Schema 404 not found"}"#.into(),
        ),
    ]);
    let mut r = Registry::new(&rec.url);
    let s = r.schema_by_id(21).expect("schema 21");
    assert_eq!(s, Schema::parse_str(CLICK_V1).unwrap());
    r.schema_by_id(21).expect("cached");
    assert_eq!(
        rec.log.lock().unwrap().len(),
        1,
        "the second lookup is served from the cache"
    );
    match r.schema_by_id(404) {
        Err(RegistryError::Status {
            status: 404, body, ..
        }) => assert!(body.contains("40403")),
        other => panic!("expected a 404, got {other:?}"),
    }
}

#[test]
fn registers_after_a_compatibility_check() {
    let rec = serve(vec![
        (
            "POST",
            "/compatibility/subjects/totals-value/versions/latest".into(),
            200,
            r#"{"is_compatible":true}"#.into(),
        ),
        ("POST", "/subjects/totals-value/versions".into(), 200, r#"{"id":42}"#.into()),
        (
            "POST",
            "/compatibility/subjects/new-value/versions/latest".into(),
            404,
            r#"{"error_code":40401,"message":"Subject 'new-value' not found."}"#.into(),
        ),
        (
            "POST",
            "/compatibility/subjects/strict-value/versions/latest".into(),
            200,
            r#"{"is_compatible":false}"#.into(),
        ),
        (
            "POST",
            "/subjects/bad-value/versions".into(),
            409,
            r#"{"error_code":409,"message":"Schema being registered is incompatible with an earlier schema for subject \"bad-value\""}"#.into(),
        ),
    ]);
    let schema = Schema::parse_str(CLICK_V1).unwrap();
    let mut r = Registry::new(&rec.url);
    assert!(r.is_compatible("totals-value", &schema).unwrap());
    assert_eq!(r.register("totals-value", &schema).unwrap(), 42);
    assert_eq!(r.register("totals-value", &schema).unwrap(), 42, "cached");
    assert!(
        r.is_compatible("new-value", &schema).unwrap(),
        "a new subject accepts anything"
    );
    assert!(!r.is_compatible("strict-value", &schema).unwrap());
    let err = r.register("bad-value", &schema).unwrap_err().to_string();
    assert!(err.contains("409") && err.contains("incompatible"), "{err}");
    let log = rec.log.lock().unwrap();
    let registers: Vec<_> = log
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/subjects/totals-value/versions")
        .collect();
    assert_eq!(registers.len(), 1);
    // The body is the Confluent request shape: {"schema": "<canonical JSON>"}.
    let body: serde_json::Value = serde_json::from_str(&registers[0].2).unwrap();
    assert_eq!(body["schema"].as_str().unwrap(), schema.canonical_form());
}

/// A pipeline with no writer_schemas (every id comes from the registry), in a temp dir:
/// `p.yaml`, `click.avsc`, `out.avsc`.
fn registry_pipeline() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("click.avsc"), CLICK_V1).unwrap();
    std::fs::write(
        dir.path().join("out.avsc"),
        r#"{"type":"record","name":"Out","fields":[{"name":"user","type":"string"},{"name":"window_start","type":{"type":"long","logicalType":"timestamp-millis"}},{"name":"window_end","type":{"type":"long","logicalType":"timestamp-millis"}},{"name":"total","type":"long"}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "apiVersion: weir/v1\nname: reg\nsource:\n  topics: [t]\n  format: avro\n  schema: click.avsc\n  event_time: {record_timestamp: true}\nsteps:\n  - key_by: [user]\n  - window: {type: tumbling, size: 10s}\n  - aggregate:\n      outputs:\n        total: {fn: sum, field: amount}\noutput:\n  schema: out.avsc\n",
    )
    .unwrap();
    dir
}

#[test]
fn a_run_resolves_unknown_writer_ids_through_the_registry() {
    // A pipeline with no writer_schemas: every id comes from the registry.
    let rec = serve(vec![(
        "GET",
        "/schemas/ids/21".into(),
        200,
        schema_answer(CLICK_V1),
    )]);
    let dir = registry_pipeline();
    let schema = Schema::parse_str(CLICK_V1).unwrap();
    let mut lines = String::new();
    use base64::Engine;
    for (i, (id, user, amount)) in [(21u32, "a", 5i64), (21, "a", 7), (99, "b", 1)]
        .iter()
        .enumerate()
    {
        let mut v = vec![0u8];
        v.extend_from_slice(&id.to_be_bytes());
        v.extend(
            apache_avro::to_avro_datum(
                &schema,
                apache_avro::types::Value::Record(vec![
                    (
                        "user".into(),
                        apache_avro::types::Value::String(user.to_string()),
                    ),
                    ("amount".into(), apache_avro::types::Value::Long(*amount)),
                ]),
            )
            .unwrap(),
        );
        lines.push_str(
            &serde_json::json!({"timestamp": 1000 + i as i64, "value_b64": base64::engine::general_purpose::STANDARD.encode(&v)})
                .to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(dir.path().join("in.jsonl"), lines).unwrap();
    let out = dir.path().join("out.jsonl");
    let dead = dir.path().join("dead.jsonl");
    let o = weir_tests::weir(&[
        "run",
        dir.path().join("p.yaml").to_str().unwrap(),
        "--input",
        dir.path().join("in.jsonl").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--dead-letter",
        dead.to_str().unwrap(),
        "--schema-registry",
        &rec.url,
    ]);
    assert!(o.status.success(), "{}", weir_tests::text(&o.stderr));
    let results = weir_tests::json_lines(&out);
    assert_eq!(
        results,
        vec![serde_json::json!({"user": "a", "window_start": 0, "window_end": 10000, "total": 12})]
    );
    let dead = weir_tests::json_lines(&dead);
    assert_eq!(dead.len(), 1, "id 99 is unknown to the registry too");
    assert_eq!(dead[0]["reason"], "schema");
}

/// A registry URL with credentials: when the registry cannot be reached the run stops
/// (an outside failure, not the record's fault) and says where it failed, with the
/// password masked.
#[test]
fn a_registry_password_never_reaches_the_error_or_the_log() {
    let dir = registry_pipeline();
    // One framed record with an id the pipeline does not know: the registry is asked.
    let line = serde_json::json!({"timestamp": 1000, "value_b64": "AAAAABUCYQo="}).to_string();
    std::fs::write(dir.path().join("in.jsonl"), line + "\n").unwrap();
    let o = std::process::Command::new(weir_tests::weir_bin())
        .args([
            "run",
            dir.path().join("p.yaml").to_str().unwrap(),
            "--input",
            dir.path().join("in.jsonl").to_str().unwrap(),
            "--output",
            dir.path().join("out.jsonl").to_str().unwrap(),
            "--schema-registry",
            "http://reg-user:reg-secret-3@127.0.0.1:1",
        ])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let err = weir_tests::text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("http://reg-user:***@127.0.0.1:1"), "{err}");
    assert!(!err.contains("reg-secret-3"), "{err}");
}
