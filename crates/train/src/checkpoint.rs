//! What `--resume` needs from a checkpoint folder that Burn does not provide.
//!
//! Burn 0.22.1 already writes every checkpoint record atomically, so the run uses its
//! [`FileCheckpointer`](burn::train::checkpoint::FileCheckpointer) as is (see [`AtomicCheckpointer`] for where that is shown). A kill
//! mid-write therefore leaves each `<part>-<epoch>.bpk` either complete or absent, plus at
//! most a scratch file beside it. What Burn lacks is the resuming side: finding the last
//! epoch for which all three records exist ([`latest_complete`]) and clearing the scratch
//! files a kill strands ([`remove_partial`]).

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use burn::store::burn_pack::AtomicFile;

/// Burn's own checkpointer, under the name the run uses; it writes
/// `<dir>/<name>-<epoch>.bpk`, the layout of `SupervisedTraining::with_default_checkpointers`.
///
/// Its writes are atomic at Burn 0.22.1 (paths under `~/.cargo/registry/src/*/`):
/// - `burn-train-0.22.1/src/checkpoint/file.rs:39-44`: `FileCheckpointer::save` calls
///   `Checkpoint::save(path)`, which `src/checkpoint/base.rs:60-103` forwards to
///   `ModuleRecord::save`, `OptimizerRecord::save` and `LrSchedulerRecord::save`;
/// - those are `burn_pack::Writer::write_to_file` (`burn-core-0.22.1/src/store/mod.rs:178-181`,
///   `burn-optim-0.22.1/src/optim/module/record/mod.rs:67-68`,
///   `burn-optim-0.22.1/src/lr_scheduler/base.rs:202-203`);
/// - `burn-pack-0.22.1/src/writer.rs:226-239` writes into an `AtomicFile` scratch sibling
///   (`<file>.<pid>-<n>.tmp`, `src/atomic.rs:72-95,119-126`), then `persist`
///   (`writer.rs:555-562`) `fsync`s it (`writer.rs:589-595`), renames it over the
///   destination and syncs the directory (`atomic.rs:218-232,297-317`); an error or panic
///   deletes the scratch file (`atomic.rs:320-327`), a SIGKILL leaves it behind
///   (`writer.rs:221-224`).
pub use burn::train::checkpoint::FileCheckpointer as AtomicCheckpointer;

/// Names of the three records a complete checkpoint consists of.
pub const PARTS: [&str; 3] = ["model", "optim", "scheduler"];

fn part_path(dir: &Path, name: &str, epoch: usize) -> std::path::PathBuf {
    dir.join(format!("{name}-{epoch}.bpk"))
}

/// Writes `bytes` to `path` with Burn's [`AtomicFile`] (synced scratch file, rename, synced
/// directory), so `path` holds either its old content or all of the new.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let (scratch, mut file) = AtomicFile::create(path)?;
    // Synced through the handle that wrote, which is where a deferred write error shows.
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", scratch.path().display()))?;
    drop(file);
    scratch.commit()?;
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

/// Whether `name` is an [`AtomicFile`] scratch name, `<file>.<pid>-<n>.tmp`.
fn is_scratch(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_suffix(".tmp")
        .and_then(|rest| rest.rsplit_once('.'))
        .and_then(|(_, tag)| tag.split_once('-'))
        .is_some_and(|(pid, n)| digits(pid) && digits(n))
}

/// Deletes the scratch files of writes that a kill interrupted; returns how many there were.
/// Burn never reads them, and cleans them up only when a write fails inside the process, so
/// they would otherwise pile up across crashes. Only safe while nothing writes to `dir`.
pub fn remove_partial(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(is_scratch))
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use burn::train::checkpoint::{Checkpointer, CheckpointerError};

    use super::*;

    #[test]
    fn latest_needs_all_parts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for p in PARTS {
            write_atomic(&part_path(dir, p, 1), b"x").unwrap();
        }
        write_atomic(&part_path(dir, "model", 2), b"x").unwrap();
        // The scratch file a kill mid-write leaves (Burn's name for it) does not count.
        fs::write(dir.join("optim-2.bpk.99-0.tmp"), b"partial").unwrap();
        assert_eq!(latest_complete(dir), Some(1));
        assert_eq!(remove_partial(dir), 1);
        assert!(!dir.join("optim-2.bpk.99-0.tmp").exists());
        assert_eq!(latest_complete(dir), Some(1));
    }

    #[test]
    fn scratch_names() {
        assert!(is_scratch("model-12.bpk.4242-0.tmp"));
        assert!(is_scratch("config.json.7-31.tmp"));
        assert!(!is_scratch("model-12.bpk"));
        assert!(!is_scratch("notes.tmp"));
        assert!(!is_scratch("model-1.bpk.x-0.tmp"));
    }

    /// Burn's checkpointer writes the file names [`latest_complete`] looks for, leaves no
    /// scratch file behind, and reads back what it wrote.
    #[test]
    fn burn_checkpointer_layout_and_round_trip() {
        use burn::optim::lr_scheduler::LrSchedulerRecord;
        let tmp = tempfile::tempdir().unwrap();
        // A folder that does not exist yet: the checkpointer creates it.
        let dir = tmp.path().join("checkpoint");
        let ckpt = AtomicCheckpointer::new(&dir, "scheduler");
        let rec = LrSchedulerRecord::new().with_scalar("step", 7u64);
        ckpt.save(3, rec).unwrap();
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["scheduler-3.bpk"]);
        let back: LrSchedulerRecord = ckpt.restore(3).unwrap();
        assert_eq!(back.scalar::<u64>("step"), Some(7));
        Checkpointer::<LrSchedulerRecord>::delete(&ckpt, 3).unwrap();
        assert!(matches!(
            Checkpointer::<LrSchedulerRecord>::restore(&ckpt, 3),
            Err(CheckpointerError::Record(_))
        ));
    }
}
