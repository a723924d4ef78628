//! Crash-safe checkpoints: each record is written to a scratch file, flushed to disk and
//! renamed into place, so a kill at any moment leaves either the old file or the new one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::train::checkpoint::{Checkpoint, Checkpointer, CheckpointerError};

/// Names of the three records a complete checkpoint consists of.
pub const PARTS: [&str; 3] = ["model", "optim", "scheduler"];

/// A [`Checkpointer`] writing `<dir>/<name>-<epoch>.bpk` atomically.
pub struct AtomicCheckpointer {
    dir: PathBuf,
    name: &'static str,
}

impl AtomicCheckpointer {
    pub fn new(dir: &Path, name: &'static str) -> Self {
        fs::create_dir_all(dir).ok();
        Self {
            dir: dir.to_path_buf(),
            name,
        }
    }

    fn path(&self, epoch: usize) -> PathBuf {
        part_path(&self.dir, self.name, epoch)
    }
}

fn part_path(dir: &Path, name: &str, epoch: usize) -> PathBuf {
    dir.join(format!("{name}-{epoch}.bpk"))
}

impl<R: Checkpoint> Checkpointer<R> for AtomicCheckpointer {
    fn save(&self, epoch: usize, record: R) -> Result<(), CheckpointerError> {
        let bytes = record
            .checkpoint_into_bytes()
            .map_err(CheckpointerError::Record)?;
        write_atomic(&self.path(epoch), &bytes).map_err(CheckpointerError::IOError)
    }

    fn delete(&self, epoch: usize) -> Result<(), CheckpointerError> {
        match fs::remove_file(self.path(epoch)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CheckpointerError::IOError(e))
            }
            _ => Ok(()),
        }
    }

    fn restore(&self, epoch: usize) -> Result<R, CheckpointerError> {
        let bytes = fs::read(self.path(epoch)).map_err(CheckpointerError::IOError)?;
        R::checkpoint_from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(CheckpointerError::Record)
    }
}

/// Extension prefix of the temporary file a write goes to before its rename (`*.tmp-<pid>`).
const TMP_PREFIX: &str = "tmp-";

/// Writes `bytes` to `path` through a synced scratch file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("{TMP_PREFIX}{}", std::process::id()));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent()
        && let Ok(d) = fs::File::open(parent)
    {
        d.sync_all().ok();
    }
    Ok(())
}

/// The last epoch for which all three records exist (each one is only ever complete).
pub fn latest_complete(dir: &Path) -> Option<usize> {
    let entries = fs::read_dir(dir).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("model-")?
                .strip_suffix(".bpk")?
                .parse()
                .ok()
        })
        .filter(|&epoch| PARTS.iter().all(|p| part_path(dir, p, epoch).is_file()))
        .max()
}

/// Deletes the temporary files of writes that a crash interrupted (`*.tmp-<pid>`); returns
/// how many there were. They are never read, but would otherwise pile up across crashes.
pub fn remove_partial(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.rsplit_once('.')
                    .is_some_and(|(_, ext)| ext.starts_with(TMP_PREFIX))
            })
        })
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_needs_all_parts() {
        let dir = std::env::temp_dir().join(format!("ckpt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for p in PARTS {
            write_atomic(&part_path(&dir, p, 1), b"x").unwrap();
        }
        write_atomic(&part_path(&dir, "model", 2), b"x").unwrap();
        // A scratch file left by a kill mid-write does not count.
        fs::write(dir.join("optim-2.tmp-99"), b"partial").unwrap();
        assert_eq!(latest_complete(&dir), Some(1));
        assert_eq!(remove_partial(&dir), 1);
        assert!(!dir.join("optim-2.tmp-99").exists());
        assert_eq!(latest_complete(&dir), Some(1));
        fs::remove_dir_all(dir).ok();
    }
}
