mod file;
mod sim;
mod traits;

pub use file::FileStorage;
pub use sim::{SimDisk, SimImage};
pub use traits::Storage;
