//! The data directory of `weir serve` (see [`super`] for the tree): where each deployed
//! pipeline's definition, schemas, control file and state live, and the server's identity.

use std::path::{Path, PathBuf};

pub struct Layout {
    data_dir: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Layout {
        Layout {
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// `<data>/pipelines/<name>`: the deployed definition and its schemas.
    pub fn pipeline_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("pipelines").join(name)
    }

    /// `<data>/state/<name>`: RocksDB (windows, offsets, watermarks).
    pub fn state_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("state").join(name)
    }

    /// `<data>/staging`: where a deploy's files wait until its definition compiles.
    pub fn staging_dir(&self) -> PathBuf {
        self.data_dir.join("staging")
    }

    /// `<data>/pipelines/<name>/control.json`: whether the pipeline is paused.
    pub fn persist_control(&self, name: &str, paused: bool) -> std::io::Result<()> {
        let path = self.pipeline_dir(name).join("control.json");
        std::fs::write(path, format!("{{\"paused\": {paused}}}\n"))
    }

    /// This server's identity in consumer groups, kept in the data directory: each pipeline
    /// is a static member (`group.instance.id` = `<id>-<pipeline>`), so a restarted server
    /// (even after SIGKILL) gets its partitions back at once instead of waiting for the
    /// broker to expire the old member.
    pub fn instance_id(&self) -> String {
        let path = self.data_dir.join("instance-id");
        if let Ok(id) = std::fs::read_to_string(&path) {
            if !id.trim().is_empty() {
                return id.trim().to_string();
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let id = format!(
            "weir-{:012x}",
            (nanos ^ ((std::process::id() as u64) << 40)) & 0xffff_ffff_ffff
        );
        if let Err(e) = std::fs::write(&path, format!("{id}\n")) {
            tracing::warn!(error = %e, "cannot keep the server's instance id");
        }
        id
    }
}
