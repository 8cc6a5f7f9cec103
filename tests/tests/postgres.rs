//! The PostgreSQL sink on its own, through event-log replays (no broker): the table is
//! created from the output schema, a second delivery of the same results changes nothing
//! (upsert), and an existing table that does not match the schema is refused with the
//! reason.

use weir_tests::scenario::pg_url;
use weir_tests::{repo, text, weir};

fn pipeline(dir: &std::path::Path, table: &str) -> std::path::PathBuf {
    let schemas = repo().join("schemas");
    let p = dir.join("pg.yaml");
    let def = std::fs::read_to_string(repo().join("pipelines/clickstream.yaml"))
        .expect("clickstream pipeline")
        .replace(
            "schema: clickstream.avsc",
            &format!("schema: {}", schemas.join("clickstream.avsc").display()),
        )
        .replace(
            "schema: page_views_per_minute.avsc",
            &format!(
                "schema: {}",
                schemas.join("page_views_per_minute.avsc").display()
            ),
        )
        .replace(
            "sinks:\n  - type: stdout",
            &format!(
                "sinks:\n  - type: postgres\n    url: \"{}\"\n    table: {table}",
                pg_url()
            ),
        )
        .replace(
            "  path: out/clickstream-dead-letter.jsonl",
            &format!("  path: {}", dir.join("dead.jsonl").display()),
        );
    std::fs::write(&p, def).expect("write pipeline");
    p
}

fn rows(c: &mut postgres::Client, table: &str) -> Vec<(String, i64, i64, Option<i64>)> {
    c.query(
        &format!(
            "SELECT user_id, (extract(epoch from window_start) * 1000)::bigint, views, total_duration_ms FROM {table} ORDER BY 2, 1"
        ),
        &[],
    )
    .expect("select")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[test]
fn upserts_are_idempotent_and_mismatched_tables_are_refused() {
    let mut c = postgres::Client::connect(&pg_url(), postgres::NoTls)
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed: {e}", pg_url()));
    let table = format!("weir_pg_{}", std::process::id());
    c.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &table);
    let input = repo().join("examples/clickstream.jsonl");
    let run = || {
        weir(&[
            "run",
            p.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ])
    };
    let o = run();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let first = rows(&mut c, &table);
    assert_eq!(first.len(), 16, "one row per user and minute: {first:?}");
    assert!(first.contains(&("alice".into(), 1_767_225_600_000, 5, Some(28_550))));
    // The same results delivered again (a replay after a crash): nothing changes.
    let o = run();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(rows(&mut c, &table), first);
    // A row that disagrees with the results (left by an older run, or written by hand) is
    // overwritten by the next delivery: an upsert, not "insert unless present".
    c.batch_execute(&format!(
        "UPDATE {table} SET views = 999, total_duration_ms = NULL WHERE user_id = 'alice' AND window_start = to_timestamp(1767225600)"
    ))
    .unwrap();
    assert_ne!(rows(&mut c, &table), first);
    let o = run();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        rows(&mut c, &table),
        first,
        "the wrong row was not overwritten"
    );
    // The primary key is (group key, window_start).
    let pk: Vec<String> = c
        .query(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY 1",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pk, vec!["user_id".to_string(), "window_start".to_string()]);

    // A table that does not match: a column of the wrong type and one missing.
    c.batch_execute(&format!(
        "DROP TABLE {table}; CREATE TABLE {table} (user_id text, window_start timestamptz, window_end timestamptz, views text, PRIMARY KEY (user_id, window_start))"
    ))
    .unwrap();
    let o = run();
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("does not match the output schema")
            && err.contains("column `views` is text, the output schema needs bigint")
            && err.contains("column `distinct_pages` is missing"),
        "{err}"
    );
    c.batch_execute(&format!("DROP TABLE {table}")).unwrap();
}
