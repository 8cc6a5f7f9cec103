//! A private PostgreSQL server for tests that take the database away (the outage test): its
//! own data directory and free loopback port, trust auth, database `test`, so stopping it
//! does not disturb the shared server at 127.0.0.1:5432 that other tests use.
//!
//! Uses the newest `/usr/lib/postgresql/*/bin` (Debian's `postgresql`, which
//! `scripts/postgres.sh` installs). As root, the server runs as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    as_postgres: bool,
}

fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

impl PrivatePostgres {
    /// Initialises and starts a server; `Err` says why it cannot.
    pub fn start() -> Result<PrivatePostgres, String> {
        let bin = bin_dir()
            .ok_or("no /usr/lib/postgresql/*/bin/pg_ctl (run scripts/postgres.sh start)")?;
        // SAFETY: getuid has no preconditions.
        let as_postgres = unsafe { libc::getuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("weir-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let pg = PrivatePostgres {
            bin,
            dir,
            port: crate::kafka::free_port(),
            as_postgres,
        };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err("cannot give the data directory to the postgres user".into());
            }
        }
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )?;
        pg.resume()?;
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-qc", "CREATE DATABASE test"])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "CREATE DATABASE test: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .map_err(|e| format!("{tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The connection string for this server's database `test`.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=test",
            self.port
        )
    }

    /// Stops the server the way a crash does (`pg_ctl stop -m immediate`: no shutdown
    /// checkpoint; the next start recovers from the WAL).
    pub fn crash(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
        .expect("stop the private PostgreSQL");
    }

    /// Starts the (stopped) server on the same port and data; waits until it serves.
    pub fn resume(&self) -> Result<(), String> {
        let data = self.data();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-l",
                log.to_str().unwrap_or_default(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if postgres::Client::connect(
                &format!(
                    "host=127.0.0.1 port={} user=postgres dbname=postgres",
                    self.port
                ),
                postgres::NoTls,
            )
            .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "the private PostgreSQL on port {} did not answer",
            self.port
        ))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}
