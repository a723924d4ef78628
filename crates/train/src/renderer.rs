//! What a run shows of its progress while it trains.
//!
//! [`RunRenderer`] sits where Burn's renderer goes: on a terminal it forwards every event to
//! Burn's dashboard; elsewhere (CI, logs, containers) it prints one readable line every few
//! seconds and one per epoch. It exists because Burn's renderer is the only place that sees
//! each metric value as it is computed, so it is also where the per-epoch means are taken and
//! handed to the [`MetricsLog`] (`metrics.jsonl`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, default_renderer,
};
use burn::train::{Interrupter, LearnerSummary};

use crate::metrics_log::{EpochRecord, MetricsFailure, MetricsLog};

/// Weighted mean of a metric over the current split.
#[derive(Default, Clone, Copy)]
struct Mean {
    sum: f64,
    count: f64,
    last: f64,
}

impl Mean {
    fn add(&mut self, entry: &NumericEntry) {
        match entry {
            NumericEntry::Value(v) => {
                self.sum += v;
                self.count += 1.0;
                self.last = *v;
            }
            NumericEntry::Aggregated {
                aggregated_value,
                count,
            } => {
                self.sum += aggregated_value * *count as f64;
                self.count += *count as f64;
                self.last = *aggregated_value;
            }
            NumericEntry::Final(v) => {
                self.sum = *v;
                self.count = 1.0;
                self.last = *v;
            }
        }
    }

    fn get(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            f64::NAN
        }
    }
}

/// Burn's renderer for a run: dashboard or plain lines, and the metrics log.
pub struct RunRenderer {
    dashboard: Option<Box<dyn MetricsRenderer>>,
    names: HashMap<MetricId, String>,
    train: HashMap<String, Mean>,
    valid: HashMap<String, Mean>,
    in_valid: bool,
    epoch: usize,
    total_epochs: usize,
    split_total: usize,
    split_start: Instant,
    epoch_start: Instant,
    train_rate: f64,
    last_line: Instant,
    log: MetricsLog,
    stop: Interrupter,
}

impl RunRenderer {
    /// A renderer appending epochs to `metrics_path`; with Burn's dashboard when stdout is a
    /// terminal and `plain` is false.
    /// Fails when the file cannot be opened for appending, before any training is done.
    pub fn new(
        metrics_path: &Path,
        interrupter: Interrupter,
        resume_from: Option<usize>,
        plain: bool,
    ) -> anyhow::Result<Self> {
        let log = MetricsLog::open(metrics_path)?;
        let stop = interrupter.clone();
        let dashboard = (!plain && std::io::stdout().is_terminal())
            .then(|| default_renderer(interrupter, resume_from));
        let now = Instant::now();
        Ok(Self {
            dashboard,
            names: HashMap::new(),
            train: HashMap::new(),
            valid: HashMap::new(),
            in_valid: false,
            epoch: resume_from.unwrap_or(0) + 1,
            total_epochs: 0,
            split_total: 0,
            split_start: now,
            epoch_start: now,
            train_rate: 0.0,
            last_line: now,
            log,
            stop,
        })
    }

    /// Where a failure to write the metrics log is reported.
    pub fn failure(&self) -> MetricsFailure {
        self.log.failure()
    }

    fn record(&mut self, state: &MetricState, valid: bool) {
        if let MetricState::Numeric(entry, Some(value)) = state
            && let Some(name) = self.names.get(&entry.metric_id).cloned()
        {
            let map = if valid {
                &mut self.valid
            } else {
                &mut self.train
            };
            map.entry(name).or_default().add(value);
        }
    }

    fn finish_epoch(&mut self) {
        let get = |m: &HashMap<String, Mean>, k: &str| m.get(k).map_or(f64::NAN, Mean::get);
        let rec = EpochRecord {
            epoch: self.epoch,
            train_loss: get(&self.train, "loss"),
            train_accuracy: get(&self.train, "accuracy"),
            valid_loss: get(&self.valid, "loss"),
            valid_accuracy: get(&self.valid, "accuracy"),
            learning_rate: self.train.get("learning_rate").map_or(f64::NAN, |m| m.last),
            train_images_per_sec: self.train_rate,
            epoch_seconds: self.epoch_start.elapsed().as_secs_f64(),
        };
        if self.log.append(&rec).is_err() {
            // A run without its curves is not a success: stop it; the log keeps why.
            self.stop.stop(Some("the metrics log cannot be written"));
        }
        if self.dashboard.is_none() {
            println!(
                "epoch {}/{}: train loss {:.4} acc {:.2}% | valid loss {:.4} acc {:.2}% | lr {:.2e} | {:.0} img/s | {:.0} s",
                rec.epoch,
                self.total_epochs,
                rec.train_loss,
                rec.train_accuracy,
                rec.valid_loss,
                rec.valid_accuracy,
                rec.learning_rate,
                rec.train_images_per_sec,
                rec.epoch_seconds
            );
        }
        self.train.clear();
        self.valid.clear();
        self.epoch += 1;
        self.epoch_start = Instant::now();
    }
}

/// `"Learning Rate"` → `"learning_rate"`.
fn key(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace([' ', '-'], "_")
}

impl MetricsRendererTraining for RunRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(&state, false);
        if let Some(d) = &mut self.dashboard {
            d.update_train(state);
        }
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(&state, true);
        if let Some(d) = &mut self.dashboard {
            d.update_valid(state);
        }
    }

    fn on_train_end(
        &mut self,
        summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        match &mut self.dashboard {
            Some(d) => d.on_train_end(summary),
            None => {
                if let Some(s) = summary {
                    println!("{s}");
                }
                Ok(())
            }
        }
    }
}

impl MetricsRendererEvaluation for RunRenderer {
    fn update_test(&mut self, name: EvaluationName, state: MetricState) {
        if let Some(d) = &mut self.dashboard {
            d.update_test(name, state);
        }
    }
}

impl TrainingProgressLogger for RunRenderer {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        items: Option<usize>,
        label: Option<&str>,
    ) {
        self.total_epochs = total_epochs;
        self.epoch = starting_epoch.max(1);
        self.epoch_start = Instant::now();
        match &mut self.dashboard {
            Some(d) => d.start(total_epochs, starting_epoch, items, label),
            None => println!("training epochs {starting_epoch}..={total_epochs}"),
        }
    }

    fn update_epoch(&mut self, epoch: usize) {
        if let Some(d) = &mut self.dashboard {
            d.update_epoch(epoch);
        }
    }

    fn start_split(&mut self, split: &str, total_items: usize) {
        self.in_valid = split.eq_ignore_ascii_case("valid");
        self.split_total = total_items;
        self.split_start = Instant::now();
        if let Some(d) = &mut self.dashboard {
            d.start_split(split, total_items);
        }
    }

    fn update_split(&mut self, items: usize) {
        if let Some(d) = &mut self.dashboard {
            return d.update_split(items);
        }
        if !self.in_valid && self.last_line.elapsed() > Duration::from_secs(15) {
            self.last_line = Instant::now();
            let rate = items as f64 / self.split_start.elapsed().as_secs_f64();
            let loss = self.train.get("loss").map_or(f64::NAN, Mean::get);
            println!(
                "epoch {}/{}: {items}/{} images, loss {loss:.4}, {rate:.0} img/s",
                self.epoch, self.total_epochs, self.split_total
            );
        }
    }

    fn end_split(&mut self) {
        if let Some(d) = &mut self.dashboard {
            d.end_split();
        }
        if self.in_valid {
            self.finish_epoch();
        } else {
            self.train_rate = self.split_total as f64 / self.split_start.elapsed().as_secs_f64();
        }
    }

    fn end(&mut self) {
        if let Some(d) = &mut self.dashboard {
            d.end();
        }
    }

    fn log_event_training(&mut self, event: String) {
        if let Some(d) = &mut self.dashboard {
            d.log_event_training(event);
        }
    }
}

impl EvaluationProgressLogger for RunRenderer {
    fn start_global_progress(&mut self, total: usize) {
        if let Some(d) = &mut self.dashboard {
            d.start_global_progress(total);
        }
    }
    fn start_test(&mut self, name: &str, total: usize) {
        if let Some(d) = &mut self.dashboard {
            d.start_test(name, total);
        }
    }
    fn update_test_progress(&mut self, items: usize) {
        if let Some(d) = &mut self.dashboard {
            d.update_test_progress(items);
        }
    }
    fn end_test(&mut self) {
        if let Some(d) = &mut self.dashboard {
            d.end_test();
        }
    }
    fn end_global_progress(&mut self) {
        if let Some(d) = &mut self.dashboard {
            d.end_global_progress();
        }
    }
    fn log_event_evaluation(&mut self, event: String) {
        if let Some(d) = &mut self.dashboard {
            d.log_event_evaluation(event);
        }
    }
}

impl MetricsRenderer for RunRenderer {
    fn manual_close(&mut self) {
        if let Some(d) = &mut self.dashboard {
            d.manual_close();
        }
    }

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id.clone(), key(&definition.name));
        if let Some(d) = &mut self.dashboard {
            d.register_metric(definition);
        }
    }
}
