//! `metrics.jsonl`: the one record of a run's epochs that outlives it.
//!
//! The renderer appends a line per finished epoch while training; the plots ([`crate::plots`])
//! and `train plot` read the file back, and `--resume` keeps appending to it. The format is
//! one JSON [`EpochRecord`] a line. It lives apart from the renderer because it is a file
//! format with readers of its own, not a part of what a run shows on screen.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One finished epoch, as written to `metrics.jsonl`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// Counted from 1, continuing across `--resume`.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (label smoothing included).
    pub train_loss: f64,
    /// Percent.
    pub train_accuracy: f64,
    /// Mean loss on the validation split at the end of the epoch.
    pub valid_loss: f64,
    /// Percent.
    pub valid_accuracy: f64,
    /// The learning rate of the epoch's last step.
    pub learning_rate: f64,
    /// Training throughput: the epoch's training images over the training phase's wall time.
    pub train_images_per_sec: f64,
    /// Wall time of the whole epoch, validation included.
    pub epoch_seconds: f64,
}

/// Reads every epoch record of a run; a line that is not a record is an error naming it.
pub fn read_metrics(path: &Path) -> anyhow::Result<Vec<EpochRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not an epoch record", path.display(), i + 1))
        })
        .collect()
}

/// Why the metrics log stopped being written, if it did: set by [`MetricsLog::append`] (the
/// renderer then stops the training), read by the run once Burn returns.
#[derive(Clone, Default)]
pub struct MetricsFailure(Arc<Mutex<Option<String>>>);

impl MetricsFailure {
    /// The reason the log failed, if it did, leaving none behind.
    pub fn take(&self) -> Option<String> {
        self.0.lock().map_or(None, |mut slot| slot.take())
    }

    /// Keeps the first reason given.
    fn set(&self, why: String) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(why);
        }
    }
}

/// `metrics.jsonl` open for appending.
pub struct MetricsLog {
    file: File,
    path: PathBuf,
    failure: MetricsFailure,
}

impl MetricsLog {
    /// Opens (or creates) the log for appending. Fails, naming the file, when it cannot be:
    /// the run calls this before any training is done.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the metrics log {}", path.display()))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            failure: MetricsFailure::default(),
        })
    }

    /// Where a failure to write the log is reported.
    pub fn failure(&self) -> MetricsFailure {
        self.failure.clone()
    }

    /// Appends `record` as one line and syncs it to disk. A failure is kept in
    /// [`failure`](Self::failure), naming the file, and returned.
    pub fn append(&mut self, record: &EpochRecord) -> Result<(), String> {
        let line = serde_json::to_string(record).expect("record serialises");
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.sync_data())
            .map_err(|e| {
                let why = format!("cannot write the metrics log {}: {e}", self.path.display());
                self.failure.set(why.clone());
                why
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_records_read_back_and_a_damaged_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let records: Vec<EpochRecord> = (1..=2)
            .map(|epoch| EpochRecord {
                epoch,
                train_loss: 2.0 / epoch as f64,
                valid_accuracy: 40.0 + epoch as f64,
                ..EpochRecord::default()
            })
            .collect();
        let mut log = MetricsLog::open(&path).unwrap();
        for r in &records {
            log.append(r).unwrap();
        }
        assert_eq!(read_metrics(&path).unwrap(), records);
        assert!(log.failure().take().is_none());

        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"epoch\": 3, \"train_lo\n");
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", read_metrics(&path).unwrap_err());
        assert!(
            err.contains("metrics.jsonl line 3: not an epoch record"),
            "{err}"
        );
    }
}
