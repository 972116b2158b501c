mod allocator;
mod block_set;
mod extents;

pub use allocator::Allocator;
pub use extents::Extent;
