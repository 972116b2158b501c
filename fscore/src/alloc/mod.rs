mod allocator;
mod extents;

pub use allocator::Allocator;
pub use extents::Extent;
