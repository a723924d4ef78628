//! What the model has done since the server started, as the Open Inference Protocol's
//! `statistics` extension reports it (`/v2/models/{name}/stats`, gRPC `ModelStatistics`):
//! requests answered and failed with their time from admission to answer, time queued, and
//! per batch size the time to prepare the input, run the model and hand out the answers.
//! Written by the engine (one writer, the inference thread, for the batch figures), read by
//! the protocol's handlers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and the time those events took in all.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Duration64 {
    /// Events.
    pub count: u64,
    /// Their total time, in nanoseconds.
    pub ns: u64,
}

impl Duration64 {
    fn add(&mut self, took: Duration) {
        self.count += 1;
        self.ns += took.as_nanos() as u64;
    }
}

/// The time of each step of one batch size's model calls.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchSteps {
    /// Normalising the images into the model's input.
    pub input: Duration64,
    /// The model's forward pass.
    pub infer: Duration64,
    /// Splitting the scores into each request's answer.
    pub output: Duration64,
}

impl BatchSteps {
    fn add(&mut self, [input, infer, output]: [Duration; 3]) {
        self.input.add(input);
        self.infer.add(infer);
        self.output.add(output);
    }
}

/// A copy of the figures at one moment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Milliseconds since the Unix epoch of the last model call (0: none yet).
    pub last_inference_ms: u64,
    /// Images run through the model.
    pub inference_count: u64,
    /// Model calls (a batch is one).
    pub execution_count: u64,
    /// Requests answered, and their time from admission to answer (decoding included).
    pub success: Duration64,
    /// Requests admitted but not answered (the model failed, or their deadline passed).
    pub fail: Duration64,
    /// Requests' time in the queue, from queued to their batch's start.
    pub queue: Duration64,
    /// Every batch's steps, whatever its size.
    pub compute: BatchSteps,
    /// The steps by batch size (images in the batch), smallest first.
    pub batches: BTreeMap<u64, BatchSteps>,
}

/// The figures, kept up by the engine. One lock for all, held for a few additions: a reader
/// never holds up the inference thread for longer than a copy of [`Snapshot`].
#[derive(Debug, Default)]
pub struct Statistics(Mutex<Snapshot>);

impl Statistics {
    /// A request answered `took` after its admission.
    pub fn success(&self, took: Duration) {
        self.lock().success.add(took);
    }

    /// A request admitted and not answered, `took` after its admission.
    pub fn fail(&self, took: Duration) {
        self.lock().fail.add(took);
    }

    /// A batch of `images` whose requests waited `queued` in all, and the time of its steps.
    pub fn batch(&self, images: usize, queued: &[Duration], steps: [Duration; 3]) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut s = self.lock();
        s.last_inference_ms = now_ms;
        s.inference_count += images as u64;
        s.execution_count += 1;
        for &wait in queued {
            s.queue.add(wait);
        }
        s.compute.add(steps);
        s.batches.entry(images as u64).or_default().add(steps);
    }

    /// The figures now.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        // The figures stay consistent whatever panicked while holding them: each update is
        // a few additions.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_counted_by_size_and_requests_by_outcome() {
        let stats = Statistics::default();
        let ms = Duration::from_millis;
        stats.batch(3, &[ms(1), ms(2)], [ms(1), ms(10), ms(1)]);
        stats.batch(1, &[ms(4)], [ms(1), ms(5), ms(1)]);
        stats.batch(3, &[ms(1)], [ms(2), ms(20), ms(2)]);
        stats.success(ms(30));
        stats.success(ms(10));
        stats.fail(ms(7));
        let s = stats.snapshot();
        assert_eq!((s.inference_count, s.execution_count), (7, 3));
        assert!(s.last_inference_ms > 0);
        assert_eq!(
            s.queue,
            Duration64 {
                count: 4,
                ns: 8_000_000
            }
        );
        assert_eq!(
            s.success,
            Duration64 {
                count: 2,
                ns: 40_000_000
            }
        );
        assert_eq!(
            s.fail,
            Duration64 {
                count: 1,
                ns: 7_000_000
            }
        );
        assert_eq!(
            s.compute.infer,
            Duration64 {
                count: 3,
                ns: 35_000_000
            }
        );
        assert_eq!(s.batches.keys().copied().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(
            s.batches[&3].infer,
            Duration64 {
                count: 2,
                ns: 30_000_000
            }
        );
    }
}
