//! What binding a long parameter list costs on SQLite (figures, not assertions): the
//! multi-row inserts Warden runs, written with numbered parameters (`$1, $2, …`, as before
//! `warden_audit::db::value_rows` wrote anonymous ones on SQLite) and with anonymous ones
//! (`?`). sqlx looks each parameter's name up as it binds it, and SQLite walks the
//! statement's list of names to find a numbered one: quadratic in the parameter count.
//!
//! An in-memory database, so the figures are binding and inserting, not the disk. Run with
//! `cargo bench -p warden-audit --bench binding` (no service needed).

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use sqlx::Connection;
use warden_audit::db::value_rows;
use warden_audit::Backend;

/// The multi-row inserts: who runs them, rows and columns a statement.
const SHAPES: &[(&str, usize, usize)] = &[
    ("embedded stream publish", 500, 7),
    ("audit append", 200, 13),
    ("embedded documents upsert", 200, 7),
    ("vault keys and tokens", 100, 5),
];
/// Statements timed per shape and form (after one that prepares it).
const REPS: u32 = 20;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
        .await
        .unwrap();
    let columns: Vec<String> = (1..=13).map(|i| format!("c{i}")).collect();
    sqlx::query(&format!("CREATE TABLE t ({})", columns.join(", ")))
        .execute(&mut conn)
        .await
        .unwrap();
    for (name, rows, cols) in SHAPES {
        let mut timed = Vec::new();
        // PostgreSQL's form is the numbered one SQLite ran before.
        for (form, backend) in [
            ("numbered", Backend::Postgres),
            ("anonymous", Backend::Sqlite),
        ] {
            let sql = format!(
                "INSERT INTO t ({}) VALUES {}",
                columns[..*cols].join(", "),
                value_rows(backend, *rows, *cols)
            );
            let mut run = async || {
                let mut q = sqlx::query(&sql);
                for i in 0..rows * cols {
                    q = q.bind(i as i64);
                }
                q.execute(&mut conn).await.unwrap();
            };
            run().await;
            let start = Instant::now();
            for _ in 0..REPS {
                run().await;
            }
            let each = start.elapsed() / REPS;
            timed.push((form, each));
        }
        let line: Vec<String> = timed
            .iter()
            .map(|(form, d)| format!("{form} {:>7.3} ms", d.as_secs_f64() * 1e3))
            .collect();
        println!(
            "sqlite {name:26} {rows:>3} rows x {cols:>2} columns ({:>4} parameters): {} a statement ({:.2} µs a row anonymous)",
            rows * cols,
            line.join(", "),
            timed[1].1.as_secs_f64() * 1e6 / *rows as f64
        );
    }
}
