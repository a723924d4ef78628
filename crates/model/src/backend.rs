//! Run-time choice among the backends this build was compiled with.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// A compute backend. Which ones exist depends on the crate features (`flex`, `ndarray`,
/// `wgpu`); [`Backend::available`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// burn-flex: pure-Rust CPU backend (the default; fastest measured here).
    Flex,
    /// burn-ndarray: the older CPU backend, deprecated by Burn 0.22.
    Ndarray,
    /// wgpu: Vulkan/Metal/DX12 GPUs (or Mesa's lavapipe on a CPU).
    Wgpu,
    /// The CPU inference fast path ([`fastcnn`]), built from the same Burn module's weights.
    /// Inference only: its Burn device (for loading and training) is the CPU backend.
    Fast,
}

impl Backend {
    /// Every backend compiled into this build, the training default first.
    pub fn available() -> Vec<Backend> {
        let mut all = Vec::new();
        if cfg!(feature = "flex") {
            all.push(Backend::Flex);
        }
        if cfg!(feature = "ndarray") {
            all.push(Backend::Ndarray);
        }
        if cfg!(feature = "wgpu") {
            all.push(Backend::Wgpu);
        }
        if cfg!(any(feature = "flex", feature = "ndarray")) {
            all.push(Backend::Fast);
        }
        all
    }

    /// The backend that serves predictions fastest on a CPU: the fast path where a CPU
    /// backend is built (measured: `cargo bench -p fastcnn` against `cargo bench -p train`).
    pub fn default_inference() -> Backend {
        if Backend::available().contains(&Backend::Fast) {
            Backend::Fast
        } else {
            Backend::default()
        }
    }

    /// Whether this backend can train (every Burn backend; not the inference fast path).
    pub fn trains(self) -> bool {
        self != Backend::Fast
    }

    /// Lower-case name, as accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu => "wgpu",
            Backend::Fast => "fast",
        }
    }

    /// The device that runs this backend. Panics only if the backend was not compiled in,
    /// which [`FromStr`] already refuses.
    pub fn device(self) -> Device {
        match self {
            #[cfg(feature = "flex")]
            Backend::Flex => Device::flex(),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Backend::Ndarray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            #[cfg(feature = "flex")]
            Backend::Fast => Device::flex(),
            #[cfg(all(feature = "ndarray", not(feature = "flex")))]
            #[allow(deprecated)]
            Backend::Fast => Device::ndarray(),
            #[allow(unreachable_patterns)]
            other => panic!("backend {other} is not compiled into this build"),
        }
    }
}

impl Default for Backend {
    fn default() -> Self {
        *Backend::available()
            .first()
            .expect("at least one backend feature (flex, ndarray, wgpu) must be enabled")
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The backend name is unknown or not compiled into this build.
#[derive(Debug, thiserror::Error)]
#[error("backend '{name}' is not available in this build (available: {available})")]
pub struct UnknownBackend {
    name: String,
    available: String,
}

impl FromStr for Backend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Backend::available()
            .into_iter()
            .find(|b| b.name() == wanted)
            .ok_or_else(|| UnknownBackend {
                name: s.to_string(),
                available: Backend::available()
                    .iter()
                    .map(|b| b.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_compiled_backends() {
        for b in Backend::available() {
            assert_eq!(b.name().parse::<Backend>().unwrap(), b);
        }
        let err = "tpu".parse::<Backend>().unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("available"), "{err}");
    }

    #[test]
    fn training_default_trains_and_inference_default_is_the_fast_path() {
        assert!(Backend::default().trains());
        assert!(!Backend::Fast.trains());
        assert_eq!(Backend::default_inference(), Backend::Fast);
    }
}
