//! The in-node AVL tree over 16-bit item offsets: search with a path stack,
//! link a new item, unlink an item, rebalance bottom-up. No parent links:
//! the path stack (at most `AVL_PATH_LEN` entries) stands in for them.

use super::layout::*;
use crate::key::Key;

/// Ancestors from the root down, as item offsets.
pub(super) type Path = [u16; AVL_PATH_LEN];

/// Outcome of a search: the path to the item, or to where it would hang.
pub(super) struct Search {
    pub(super) path: Path,
    pub(super) depth: usize,
    /// The item with the key, which is then `path[depth - 1]`.
    pub(super) found: Option<usize>,
}

pub(super) fn search(buf: &[u8], key: &Key) -> Search {
    let mut s = Search {
        path: [0; AVL_PATH_LEN],
        depth: 0,
        found: None,
    };
    let want = key_ord(key);
    let mut cur = hdr_root(buf);
    while cur != 0 && s.depth < AVL_PATH_LEN {
        s.path[s.depth] = cur as u16;
        s.depth += 1;
        let have = item_key_ord(buf, cur);
        if want == have {
            s.found = Some(cur);
            break;
        }
        cur = child_toward(buf, cur, want > have);
    }
    s
}

/// Makes `new` (links zeroed, height 1) the child where `search` ended.
pub(super) fn link(buf: &mut [u8], s: &mut Search, key: &Key, new: usize) {
    if s.depth == 0 {
        set_hdr_root(buf, new);
        return;
    }
    let parent = s.path[s.depth - 1] as usize;
    if *key < item_key(buf, parent) {
        set_left(buf, parent, new);
    } else {
        set_right(buf, parent, new);
    }
    rebalance(buf, &s.path, s.depth);
}

/// Removes the found item (`path[depth - 1]`) from the tree.
pub(super) fn unlink(buf: &mut [u8], s: &mut Search) {
    let d_idx = s.depth - 1;
    let del = s.path[d_idx] as usize;
    let parent = if d_idx == 0 {
        0
    } else {
        s.path[d_idx - 1] as usize
    };
    let (l, r) = (left(buf, del), right(buf, del));
    if l != 0 && r != 0 {
        // The in-order successor takes the deleted item's place.
        let mut succ = r;
        push(s, succ);
        loop {
            let next = left(buf, succ);
            if next == 0 {
                break;
            }
            succ = next;
            push(s, succ);
        }
        let succ_parent = s.path[s.depth - 2] as usize;
        let succ_right = right(buf, succ);
        if succ_parent == del {
            set_right(buf, del, succ_right);
        } else {
            set_left(buf, succ_parent, succ_right);
        }
        set_left(buf, succ, left(buf, del));
        set_right(buf, succ, right(buf, del));
        set_height(buf, succ, height(buf, del));
        replace_child(buf, parent, del, succ);
        s.path[d_idx] = succ as u16;
    } else {
        replace_child(buf, parent, del, if l != 0 { l } else { r });
    }
    s.depth -= 1;
    rebalance(buf, &s.path, s.depth);
}

#[inline]
fn push(s: &mut Search, off: usize) {
    if s.depth < AVL_PATH_LEN {
        s.path[s.depth] = off as u16;
        s.depth += 1;
    }
}

/// Points `parent`'s link (or the root, for parent 0) from `old` to `new`.
pub(super) fn replace_child(buf: &mut [u8], parent: usize, old: usize, new: usize) {
    if parent == 0 {
        set_hdr_root(buf, new);
    } else if left(buf, parent) == old {
        set_left(buf, parent, new);
    } else {
        set_right(buf, parent, new);
    }
}

/// The parent of the item `target` whose key is `key` (0 for the root).
pub(super) fn parent_of(buf: &[u8], key: &Key, target: usize) -> usize {
    let mut parent = 0;
    let mut cur = hdr_root(buf);
    for _ in 0..AVL_PATH_LEN {
        if cur == target || cur == 0 {
            break;
        }
        parent = cur;
        cur = if *key < item_key(buf, cur) {
            left(buf, cur)
        } else {
            right(buf, cur)
        };
    }
    parent
}

/// Restores heights and balance from `path[depth - 1]` up to the root,
/// stopping once a subtree neither rotated nor changed height.
fn rebalance(buf: &mut [u8], path: &Path, mut depth: usize) {
    while depth > 0 {
        depth -= 1;
        let node = path[depth] as usize;
        let old_height = height(buf, node);
        let top = balance(buf, node);
        if top != node {
            let parent = if depth == 0 {
                0
            } else {
                path[depth - 1] as usize
            };
            replace_child(buf, parent, node, top);
        } else if height(buf, node) == old_height {
            break;
        }
    }
}

#[inline]
fn fix_height(buf: &mut [u8], node: usize) {
    let h = height(buf, left(buf, node)).max(height(buf, right(buf, node)));
    set_height(buf, node, h + 1);
}

/// Balances the subtree at `node` whose children are balanced; returns its
/// new top.
fn balance(buf: &mut [u8], node: usize) -> usize {
    let (l, r) = (left(buf, node), right(buf, node));
    let (hl, hr) = (height(buf, l), height(buf, r));
    if hl > hr + 1 {
        if height(buf, left(buf, l)) < height(buf, right(buf, l)) {
            let top = rotate_left(buf, l);
            set_left(buf, node, top);
        }
        rotate_right(buf, node)
    } else if hr > hl + 1 {
        if height(buf, right(buf, r)) < height(buf, left(buf, r)) {
            let top = rotate_right(buf, r);
            set_right(buf, node, top);
        }
        rotate_left(buf, node)
    } else {
        set_height(buf, node, hl.max(hr) + 1);
        node
    }
}

fn rotate_right(buf: &mut [u8], node: usize) -> usize {
    let l = left(buf, node);
    set_left(buf, node, right(buf, l));
    set_right(buf, l, node);
    fix_height(buf, node);
    fix_height(buf, l);
    l
}

fn rotate_left(buf: &mut [u8], node: usize) -> usize {
    let r = right(buf, node);
    set_right(buf, node, left(buf, r));
    set_left(buf, r, node);
    fix_height(buf, node);
    fix_height(buf, r);
    r
}
