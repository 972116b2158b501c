//! Helpers for this crate's unit tests.

/// The error and its sources as `{:#}` prints them (anyhow, the CLI): a
/// cause that is both in the message and the source shows twice.
pub(crate) fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        text += &format!(": {source}");
        next = source.source();
    }
    text
}
