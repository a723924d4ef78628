//! What a request's body holds in memory: its files ([`Upload`], [`Uploads`]) or the whole
//! body ([`Body`]), each holding its charge on [`BodyBudget`], the bytes all requests together
//! may hold at once, until dropped. Bodies are read and metered at the HTTP edge
//! ([`crate::http::body`]); here is what they become.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One uploaded file.
#[derive(Debug)]
pub struct Upload {
    /// The multipart part's file name, or the `X-Filename` header of a raw body, if given:
    /// echoed back so a client can match answers to its files (cut to [`MAX_FILENAME_BYTES`](crate::http::body::MAX_FILENAME_BYTES)).
    pub filename: Option<String>,
    /// The file's bytes, not yet decoded.
    pub bytes: Vec<u8>,
}

/// The files of one request, holding their share of the [`BodyBudget`] until dropped.
#[derive(Debug)]
pub struct Uploads {
    /// The files in the order they were sent.
    pub files: Vec<Upload>,
    /// Form values sent beside the files (a field's name and its text), where the route takes
    /// some (`POST /explain`'s `method`, `target`, ...).
    pub options: Vec<(&'static str, String)>,
    _charged: Option<OwnedSemaphorePermit>,
}

impl Uploads {
    /// `files`, holding `charged` (their bytes' charge on the budget) until dropped.
    pub fn new(files: Vec<Upload>, charged: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            files,
            options: Vec::new(),
            _charged: charged,
        }
    }

    /// These uploads with the form values sent beside them.
    #[must_use]
    pub fn with_options(mut self, options: Vec<(&'static str, String)>) -> Self {
        self.options = options;
        self
    }

    /// The value of form field `name`, if sent.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Limits applied while reading.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// Total body bytes of one request.
    pub body: usize,
    /// Files kept from the expected field.
    pub files: usize,
}

/// Request-body bytes that all requests together may hold in memory at once.
#[derive(Debug, Clone)]
pub struct BodyBudget(Arc<Semaphore>);

impl BodyBudget {
    /// A budget of `bytes` (`--body-memory`); requests that would take it past that are
    /// refused with 503 rather than held.
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// Charges `bytes` at once, or `None` when the budget has not that many left.
    pub fn try_charge(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes).ok()?;
        self.0.clone().try_acquire_many_owned(bytes).ok()
    }

    /// Bytes not charged to any request right now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// A whole request body in memory, holding its share of the [`BodyBudget`] until dropped.
#[derive(Debug)]
pub struct Body {
    /// The body as it arrived.
    pub bytes: Vec<u8>,
    charged: Option<OwnedSemaphorePermit>,
}

impl Body {
    /// `bytes`, holding `charged` until dropped.
    pub fn new(bytes: Vec<u8>, charged: Option<OwnedSemaphorePermit>) -> Self {
        Self { bytes, charged }
    }

    /// `files`, made from this body's bytes, as [`Uploads`] that keep the body's charge on the
    /// budget (they are never larger than the body); the body's own bytes are freed.
    pub fn into_uploads(self, files: Vec<Upload>) -> Uploads {
        Uploads {
            files,
            options: Vec::new(),
            _charged: self.charged,
        }
    }
}
