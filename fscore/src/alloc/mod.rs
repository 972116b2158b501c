mod allocator;
mod block_set;
mod extents;

pub use allocator::Allocator;
pub use extents::Extent;

/// The maximal runs of a set of blocks, in order: the model the property
/// tests of `BlockSet` and `ExtentSet` check them against.
#[cfg(test)]
pub(crate) fn model_runs(model: &std::collections::BTreeSet<u64>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for &b in model {
        match out.last_mut() {
            Some(last) if last.end() == b => last.len += 1,
            _ => out.push(Extent::new(b, 1)),
        }
    }
    out
}
