//! The shape of the tree for `dump`: nodes and items per level, from the
//! internal nodes only (a level-1 node's items are its leaves), so it reads
//! about one block in a hundred.

use super::path::read_node;
use super::Tree;
use crate::block::{BlockRef, BlockStore};
use crate::error::Result;

/// One level of the tree, root level first in `Tree::shape`'s result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LevelShape {
    /// 0 for leaves.
    pub level: u8,
    pub nodes: u64,
    /// Items in the level's nodes (for leaves: the tree's items).
    pub items: u64,
}

impl Tree {
    pub(crate) fn shape(&self, store: &mut BlockStore) -> Result<Vec<LevelShape>> {
        let height = self.height as usize;
        let mut levels: Vec<LevelShape> = (0..height)
            .rev()
            .map(|level| LevelShape {
                level: level as u8,
                ..LevelShape::default()
            })
            .collect();
        levels[height - 1].items = self.items;
        if height == 1 {
            levels[0].nodes = 1;
            return Ok(levels);
        }
        let mut stack = vec![(self.root, height - 1)];
        while let Some((r, level)) = stack.pop() {
            let block = read_node(store, r, level)?;
            let node = super::path::accessor(&block, r.blkno)?;
            let at = height - 1 - level;
            levels[at].nodes += 1;
            levels[at].items += node.item_count() as u64;
            if level == 1 {
                levels[height - 1].nodes += node.item_count() as u64;
                continue;
            }
            for (_, value) in node.items() {
                stack.push((BlockRef::decode(value, r.blkno)?, level - 1));
            }
        }
        Ok(levels)
    }
}
