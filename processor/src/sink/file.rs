//! JSON Lines to a file or to standard output. See the module above for how the file sink
//! stays exact across a crash: it truncates to its checkpointed length on restart.

use super::{Output, Sink, SinkError};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};

pub struct FileSink {
    path: String,
    out: BufWriter<File>,
    len: u64,
    /// A regular file (synced at each checkpoint); else a device or a pipe.
    regular: bool,
}

impl FileSink {
    /// Opens `path`: truncated to `resume_at` bytes when resuming from a checkpoint,
    /// emptied otherwise.
    pub fn open(path: &str, resume_at: Option<u64>) -> Result<FileSink, SinkError> {
        let open_err = |source| SinkError::Open {
            path: path.to_string(),
            source,
        };
        if let Some(parent) = std::path::Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(open_err)?;
            }
        }
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(open_err)?;
        let len = resume_at.unwrap_or(0);
        let meta = f.metadata().map_err(open_err)?;
        // A device or a pipe (`--output /dev/null`) is written as it is: it has no length to
        // cut back to.
        if !meta.is_file() {
            return Ok(FileSink {
                path: path.to_string(),
                out: BufWriter::with_capacity(1 << 16, f),
                len,
                regular: false,
            });
        }
        let actual = meta.len();
        if actual < len {
            return Err(SinkError::Truncated {
                path: path.to_string(),
                expected: len,
                actual,
            });
        }
        f.set_len(len).map_err(open_err)?;
        f.seek(SeekFrom::Start(len)).map_err(open_err)?;
        Ok(FileSink {
            path: path.to_string(),
            out: BufWriter::with_capacity(1 << 16, f),
            len,
            regular: true,
        })
    }

    pub fn write_line(&mut self, line: &str) -> Result<(), SinkError> {
        let werr = |source| SinkError::Write {
            name: self.path.clone(),
            source,
        };
        self.out.write_all(line.as_bytes()).map_err(werr)?;
        self.out
            .write_all(b"\n")
            .map_err(|source| SinkError::Write {
                name: self.path.clone(),
                source,
            })?;
        self.len += line.len() as u64 + 1;
        Ok(())
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.path
    }

    fn write(&mut self, out: &Output<'_>) -> Result<(), SinkError> {
        self.write_line(out.json)
    }

    fn flush(&mut self) -> Result<Option<u64>, SinkError> {
        let werr = |source| SinkError::Write {
            name: self.path.clone(),
            source,
        };
        self.out.flush().map_err(werr)?;
        if self.regular {
            self.out
                .get_ref()
                .sync_data()
                .map_err(|source| SinkError::Write {
                    name: self.path.clone(),
                    source,
                })?;
        }
        Ok(Some(self.len))
    }
}

pub struct StdoutSink {
    out: BufWriter<std::io::Stdout>,
}

impl Default for StdoutSink {
    fn default() -> Self {
        StdoutSink {
            out: BufWriter::new(std::io::stdout()),
        }
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }

    fn write(&mut self, out: &Output<'_>) -> Result<(), SinkError> {
        let werr = |source| SinkError::Write {
            name: "stdout".into(),
            source,
        };
        self.out.write_all(out.json.as_bytes()).map_err(werr)?;
        self.out
            .write_all(b"\n")
            .map_err(|source| SinkError::Write {
                name: "stdout".into(),
                source,
            })
    }

    fn flush(&mut self) -> Result<Option<u64>, SinkError> {
        self.out.flush().map_err(|source| SinkError::Write {
            name: "stdout".into(),
            source,
        })?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::FileSink;

    /// A resumed sink cuts the file back to its checkpointed length: what was written after
    /// the checkpoint (and reached the disk before a crash) is gone, then re-emitted.
    #[test]
    fn resume_truncates_what_followed_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let p = path.to_str().unwrap();
        std::fs::write(&path, "a\nb\nwritten after the checkpoint\n").unwrap();
        let mut s = FileSink::open(p, Some(4)).unwrap();
        s.write_line("c").unwrap();
        assert_eq!(crate::sink::Sink::flush(&mut s).unwrap(), Some(6));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\nc\n");
        // A fresh run (no checkpoint) starts the file empty.
        let mut s = FileSink::open(p, None).unwrap();
        s.write_line("z").unwrap();
        crate::sink::Sink::flush(&mut s).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "z\n");
    }

    /// A file shorter than its checkpoint lost acknowledged output: refused, not padded.
    #[test]
    fn resume_refuses_a_file_shorter_than_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "a\n").unwrap();
        assert!(FileSink::open(path.to_str().unwrap(), Some(10)).is_err());
    }
}
