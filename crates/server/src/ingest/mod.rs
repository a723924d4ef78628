//! Request bodies into images, within budgets: upload metering and limits ([`upload`]), and
//! decoding under a memory budget ([`decode`]).

pub mod decode;
pub mod upload;
