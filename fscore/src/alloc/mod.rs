mod allocator;
mod extents;
mod runs;

pub use allocator::Allocator;
pub use extents::Extent;
