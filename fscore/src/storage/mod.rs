mod file;
mod sim;
mod traits;

pub use file::{FileStorage, DIRECT_ALIGN_BYTES};
pub use sim::{SimDisk, SimImage};
pub use traits::Storage;
