//! `MerkleMap`: the ordered map the ledger state keeps its accounts, stakes, unbonding queue,
//! tasks and reputation in. Three properties make a block's cost grow with its transactions
//! rather than with the size of the state:
//!
//! - **persistent**: a clone shares every node, and a change copies only the path to it, so
//!   applying a block to a copy of the state costs what the block touches;
//! - **Merkleised**: every node caches the hash of its subtree, computed on first use, so the
//!   root after a block rehashes only the nodes the block created;
//! - **diffable**: [`MerkleMap::changes_since`] walks two versions and skips the subtrees they
//!   share, so the store writes only the rows a block changed.
//!
//! It is a crit-bit tree (a binary Patricia trie) over an order-preserving, fixed-length
//! encoding of the keys ([`TrieKey`]): a branch names the first bit in which the keys below it
//! differ, left for 0, right for 1. Two properties follow that a consensus state needs. Its shape,
//! and with it the root, depends only on its contents, never on the order of insertions and
//! removals, so every node computes the same root for the same state. And no path is longer
//! than a key has bits (at most 328 here) whatever keys anyone chooses: keys are often chosen
//! by strangers (any 32 bytes can receive a transfer), and a structure whose depth keys can
//! grind (a treap with hash priorities, say) would let one make every node slow, or overflow
//! its stack. (Written here rather than taken from a crate: the Merkle trees on crates.io —
//! jmt, sparse-merkle-tree, merk — come with their own storage layers and versioning, and the
//! state machine must stay pure and in memory.)
//!
//! Hashes: an empty map is `Hash::ZERO`; a leaf is `tagged("pot/map/leaf", key ‖ value)` over
//! the key's trie encoding and the value's borsh encoding; a branch is
//! `tagged("pot/map/branch", bit ‖ left ‖ right)` with the bit index as 4 little-endian bytes.

use std::fmt;
use std::ops::Index;
use std::sync::{Arc, OnceLock};

use borsh::{BorshDeserialize, BorshSerialize};

use crate::crypto::Address;
use crate::encoding::encode;
use crate::hash::Hash;
use crate::tx::Role;

/// A key's encoding for the trie: every key of a type encodes to the same number of bytes, and
/// encodings compare (as bytes) as the keys do.
pub trait TrieKey: Ord + Clone {
    fn trie_bytes(&self, out: &mut Vec<u8>);

    fn to_trie_bytes(&self) -> Box<[u8]> {
        let mut out = Vec::with_capacity(48);
        self.trie_bytes(&mut out);
        out.into_boxed_slice()
    }
}

impl TrieKey for Address {
    fn trie_bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
}

impl TrieKey for Hash {
    fn trie_bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
}

impl TrieKey for Role {
    fn trie_bytes(&self, out: &mut Vec<u8>) {
        // Declaration order, as `Ord` is derived.
        out.push(match self {
            Role::Miner => 0,
            Role::Validator => 1,
        });
    }
}

macro_rules! big_endian_key {
    ($($t:ty),*) => {$(
        impl TrieKey for $t {
            fn trie_bytes(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_be_bytes());
            }
        }
    )*};
}
big_endian_key!(u16, u32, u64);

impl<A: TrieKey, B: TrieKey> TrieKey for (A, B) {
    fn trie_bytes(&self, out: &mut Vec<u8>) {
        self.0.trie_bytes(out);
        self.1.trie_bytes(out);
    }
}

impl<A: TrieKey, B: TrieKey, C: TrieKey> TrieKey for (A, B, C) {
    fn trie_bytes(&self, out: &mut Vec<u8>) {
        self.0.trie_bytes(out);
        self.1.trie_bytes(out);
        self.2.trie_bytes(out);
    }
}

/// Bit `i` of `bytes`, most significant first (so that 0 sorts before 1).
fn bit(bytes: &[u8], i: u32) -> bool {
    bytes[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
}

/// The first bit in which two encodings of the same length differ.
fn first_difference(a: &[u8], b: &[u8]) -> Option<u32> {
    let (i, (x, y)) = a.iter().zip(b).enumerate().find(|(_, (x, y))| x != y)?;
    Some(i as u32 * 8 + (x ^ y).leading_zeros())
}

type Link<K, V> = Option<Arc<Node<K, V>>>;

enum Node<K, V> {
    Leaf {
        key: K,
        bits: Box<[u8]>,
        /// Shared, so copying a leaf never copies its value.
        value: Arc<V>,
        /// Reset when the value changes.
        hash: OnceLock<Hash>,
    },
    Branch {
        /// The first bit in which the keys below differ; deeper branches name later bits.
        bit: u32,
        left: Arc<Node<K, V>>,
        right: Arc<Node<K, V>>,
        /// Entries below.
        len: usize,
        /// Reset on every change below.
        hash: OnceLock<Hash>,
    },
}

impl<K: Clone, V> Clone for Node<K, V> {
    fn clone(&self) -> Self {
        match self {
            Node::Leaf {
                key,
                bits,
                value,
                hash,
            } => Node::Leaf {
                key: key.clone(),
                bits: bits.clone(),
                value: value.clone(),
                hash: hash.clone(),
            },
            Node::Branch {
                bit,
                left,
                right,
                len,
                hash,
            } => Node::Branch {
                bit: *bit,
                left: left.clone(),
                right: right.clone(),
                len: *len,
                hash: hash.clone(),
            },
        }
    }
}

impl<K, V> Node<K, V> {
    fn len(&self) -> usize {
        match self {
            Node::Leaf { .. } => 1,
            Node::Branch { len, .. } => *len,
        }
    }

    fn leaf(key: K, bits: Box<[u8]>, value: Arc<V>) -> Self {
        Node::Leaf {
            key,
            bits,
            value,
            hash: OnceLock::new(),
        }
    }

    fn branch(bit: u32, left: Arc<Node<K, V>>, right: Arc<Node<K, V>>) -> Self {
        Node::Branch {
            bit,
            len: left.len() + right.len(),
            left,
            right,
            hash: OnceLock::new(),
        }
    }

    /// Recount after a change below, and forget the stale hash.
    fn changed(&mut self) {
        match self {
            Node::Leaf { hash, .. } => *hash = OnceLock::new(),
            Node::Branch {
                left,
                right,
                len,
                hash,
                ..
            } => {
                *len = left.len() + right.len();
                *hash = OnceLock::new();
            }
        }
    }

    /// The leftmost leaf's key.
    fn min_key(&self) -> &K {
        let mut n = self;
        loop {
            match n {
                Node::Leaf { key, .. } => return key,
                Node::Branch { left, .. } => n = left,
            }
        }
    }

    /// The leaf a search for `bits` ends at (the only one that can hold that key).
    fn closest_leaf(&self, bits: &[u8]) -> &Node<K, V> {
        let mut n = self;
        while let Node::Branch {
            bit: b,
            left,
            right,
            ..
        } = n
        {
            n = if bit(bits, *b) { right } else { left };
        }
        n
    }
}

impl<K, V: BorshSerialize> Node<K, V> {
    /// Recursion is as deep as the tree, which is at most the key's bit length.
    fn hash(&self) -> Hash {
        match self {
            Node::Leaf {
                bits, value, hash, ..
            } => *hash.get_or_init(|| Hash::tagged("pot/map/leaf", &[bits, &encode(&**value)])),
            Node::Branch {
                bit,
                left,
                right,
                hash,
                ..
            } => *hash.get_or_init(|| {
                Hash::tagged(
                    "pot/map/branch",
                    &[
                        &bit.to_le_bytes(),
                        left.hash().as_bytes(),
                        right.hash().as_bytes(),
                    ],
                )
            }),
        }
    }
}

/// Put a new leaf, which differs from every key below `node` first at bit `at`, into the
/// subtree at `node`: above the first node that is a leaf or branches at a later bit.
fn insert_new<K: Clone, V>(node: &mut Arc<Node<K, V>>, leaf: Node<K, V>, bits: &[u8], at: u32) {
    let descend = match &**node {
        Node::Branch { bit: b, .. } => *b < at,
        Node::Leaf { .. } => false,
    };
    if descend {
        let n = Arc::make_mut(node);
        if let Node::Branch {
            bit: b,
            left,
            right,
            ..
        } = n
        {
            let child = if bit(bits, *b) { right } else { left };
            insert_new(child, leaf, bits, at);
        }
        n.changed();
        return;
    }
    let old = node.clone();
    let new = Arc::new(leaf);
    *node = Arc::new(if bit(bits, at) {
        Node::branch(at, old, new)
    } else {
        Node::branch(at, new, old)
    });
}

/// Replace the value of the leaf for `bits`, which the subtree at `node` holds.
fn replace<K: Clone, V>(node: &mut Arc<Node<K, V>>, bits: &[u8], value: Arc<V>) -> Arc<V> {
    let n = Arc::make_mut(node);
    let old = match n {
        Node::Leaf { value: v, .. } => std::mem::replace(v, value),
        Node::Branch {
            bit: b,
            left,
            right,
            ..
        } => {
            let child = if bit(bits, *b) { right } else { left };
            replace(child, bits, value)
        }
    };
    n.changed();
    old
}

/// Remove the leaf for `bits` from below the branch at `node` (the tree holds it); a branch
/// left with one child is replaced by that child.
fn remove_below<K: Clone, V>(node: &mut Arc<Node<K, V>>, bits: &[u8]) -> Arc<V> {
    let n = Arc::make_mut(node);
    let Node::Branch {
        bit: b,
        left,
        right,
        ..
    } = n
    else {
        unreachable!("a leaf is removed by its parent");
    };
    let (child, sibling) = if bit(bits, *b) {
        (right, left)
    } else {
        (left, right)
    };
    if let Node::Leaf { value, .. } = &**child {
        let value = value.clone();
        let sibling = sibling.clone();
        *node = sibling;
        return value;
    }
    let value = remove_below(child, bits);
    n.changed();
    value
}

/// A persistent, Merkleised ordered map (see the module documentation).
pub struct MerkleMap<K, V> {
    root: Link<K, V>,
}

impl<K, V> Clone for MerkleMap<K, V> {
    /// O(1): the copy shares every node.
    fn clone(&self) -> Self {
        MerkleMap {
            root: self.root.clone(),
        }
    }
}

impl<K, V> Default for MerkleMap<K, V> {
    fn default() -> Self {
        MerkleMap { root: None }
    }
}

impl<K, V> MerkleMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.root.as_ref().map_or(0, |n| n.len())
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_none()
    }

    /// Entries in ascending key order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter {
            stack: self.root.as_deref().into_iter().collect(),
            remaining: self.len(),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: TrieKey, V> MerkleMap<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        let bits = key.to_trie_bytes();
        match self.root.as_deref()?.closest_leaf(&bits) {
            Node::Leaf { key: k, value, .. } if k == key => Some(value),
            _ => None,
        }
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }
}

impl<K: TrieKey, V: Clone> MerkleMap<K, V> {
    /// Insert or replace; the previous value if there was one.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let bits = key.to_trie_bytes();
        let value = Arc::new(value);
        let Some(root) = &mut self.root else {
            self.root = Some(Arc::new(Node::leaf(key, bits, value)));
            return None;
        };
        let Node::Leaf { bits: near, .. } = root.closest_leaf(&bits) else {
            unreachable!("a search ends at a leaf");
        };
        match first_difference(near, &bits) {
            None => Some(unwrap_or_clone(replace(root, &bits, value))),
            Some(at) => {
                let leaf = Node::leaf(key, bits.clone(), value);
                insert_new(root, leaf, &bits, at);
                None
            }
        }
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        if !self.contains_key(key) {
            return None;
        }
        let bits = key.to_trie_bytes();
        let root = self.root.as_mut().expect("the key is present");
        if let Node::Leaf { value, .. } = &**root {
            let value = value.clone();
            self.root = None;
            return Some(unwrap_or_clone(value));
        }
        Some(unwrap_or_clone(remove_below(root, &bits)))
    }

    /// The value at `key`, to change in place. The path to it is copied (if shared with another
    /// version) and its cached hashes are forgotten before the reference is handed out.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if !self.contains_key(key) {
            return None;
        }
        let bits = key.to_trie_bytes();
        let mut node = self.root.as_mut().expect("the key is present");
        loop {
            let n = Arc::make_mut(node);
            n.changed();
            match n {
                Node::Leaf { value, .. } => return Some(Arc::make_mut(value)),
                Node::Branch {
                    bit: b,
                    left,
                    right,
                    ..
                } => node = if bit(&bits, *b) { right } else { left },
            }
        }
    }

    /// The value at `key`, inserting the default first if there is none.
    pub fn get_mut_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        if !self.contains_key(&key) {
            self.insert(key.clone(), V::default());
        }
        self.get_mut(&key).expect("just inserted")
    }
}

fn unwrap_or_clone<V: Clone>(v: Arc<V>) -> V {
    Arc::try_unwrap(v).unwrap_or_else(|shared| (*shared).clone())
}

impl<K, V: BorshSerialize> MerkleMap<K, V> {
    /// The Merkle root: equal for equal contents, whatever the history.
    pub fn root(&self) -> Hash {
        self.root.as_ref().map_or(Hash::ZERO, |n| n.hash())
    }
}

/// A difference between two versions of a map, in ascending key order.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a, K, V> {
    /// The key is new, or its value differs.
    Put(&'a K, &'a V),
    Delete(&'a K),
}

/// Work left in an in-order walk: a whole subtree, or one leaf's entry.
enum Pending<'a, K, V> {
    Tree(&'a Arc<Node<K, V>>),
    Entry(&'a K, &'a Arc<V>),
}

impl<K, V> Clone for Pending<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Pending<'_, K, V> {}

struct Walk<'a, K, V> {
    /// The next item is on top.
    stack: Vec<Pending<'a, K, V>>,
    /// Subtrees opened so far.
    opened: usize,
}

impl<'a, K, V> Walk<'a, K, V> {
    fn new(root: &'a Link<K, V>) -> Self {
        Walk {
            stack: root.iter().map(Pending::Tree).collect(),
            opened: 0,
        }
    }

    fn top(&self) -> Option<Pending<'a, K, V>> {
        self.stack.last().copied()
    }

    /// Replace the subtree on top by its children (a leaf by its entry).
    fn expand(&mut self) {
        if let Some(Pending::Tree(n)) = self.stack.pop() {
            self.opened += 1;
            match &**n {
                Node::Leaf { key, value, .. } => self.stack.push(Pending::Entry(key, value)),
                Node::Branch { left, right, .. } => {
                    self.stack.push(Pending::Tree(right));
                    self.stack.push(Pending::Tree(left));
                }
            }
        }
    }
}

impl<K: Ord, V: PartialEq> MerkleMap<K, V> {
    /// What changed from `old` to `self`. Subtrees the two versions share are skipped whole, so
    /// for a version derived from `old` by a few changes this costs about those changes times
    /// the tree's depth, not the size of the map.
    pub fn changes_since<'a>(&'a self, old: &'a MerkleMap<K, V>) -> Vec<Change<'a, K, V>> {
        self.diff(old).0
    }

    /// The changes, and how many subtrees were opened to find them.
    fn diff<'a>(&'a self, old: &'a MerkleMap<K, V>) -> (Vec<Change<'a, K, V>>, usize) {
        use Pending::{Entry, Tree};
        let (mut o, mut n) = (Walk::new(&old.root), Walk::new(&self.root));
        let mut out = Vec::new();
        loop {
            match (o.top(), n.top()) {
                (None, None) => return (out, o.opened + n.opened),
                (Some(Tree(a)), Some(Tree(b))) => {
                    if Arc::ptr_eq(a, b) {
                        o.stack.pop();
                        n.stack.pop();
                    } else {
                        // Open the bigger one: a shared subtree is never bigger than a tree
                        // that contains it, so it stays whole until both sides reach it.
                        if a.len() >= b.len() {
                            o.expand();
                        }
                        if b.len() >= a.len() {
                            n.expand();
                        }
                    }
                }
                (Some(Tree(t)), Some(Entry(k, v))) => {
                    if k < t.min_key() {
                        out.push(Change::Put(k, &**v));
                        n.stack.pop();
                    } else {
                        o.expand();
                    }
                }
                (Some(Entry(k, _)), Some(Tree(t))) => {
                    if k < t.min_key() {
                        out.push(Change::Delete(k));
                        o.stack.pop();
                    } else {
                        n.expand();
                    }
                }
                (Some(Tree(_)), None) => o.expand(),
                (None, Some(Tree(_))) => n.expand(),
                (Some(Entry(k, _)), None) => {
                    out.push(Change::Delete(k));
                    o.stack.pop();
                }
                (None, Some(Entry(k, v))) => {
                    out.push(Change::Put(k, &**v));
                    n.stack.pop();
                }
                (Some(Entry(ka, va)), Some(Entry(kb, vb))) => match ka.cmp(kb) {
                    std::cmp::Ordering::Less => {
                        out.push(Change::Delete(ka));
                        o.stack.pop();
                    }
                    std::cmp::Ordering::Greater => {
                        out.push(Change::Put(kb, &**vb));
                        n.stack.pop();
                    }
                    std::cmp::Ordering::Equal => {
                        if !(Arc::ptr_eq(va, vb) || va == vb) {
                            out.push(Change::Put(kb, &**vb));
                        }
                        o.stack.pop();
                        n.stack.pop();
                    }
                },
            }
        }
    }
}

/// In-order iterator over a [`MerkleMap`].
pub struct Iter<'a, K, V> {
    /// Subtrees still to visit; the next one on top.
    stack: Vec<&'a Node<K, V>>,
    remaining: usize,
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.stack.pop()? {
                Node::Leaf { key, value, .. } => {
                    self.remaining -= 1;
                    return Some((key, &**value));
                }
                Node::Branch { left, right, .. } => {
                    self.stack.push(right);
                    self.stack.push(left);
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<K, V> ExactSizeIterator for Iter<'_, K, V> {}

impl<'a, K, V> IntoIterator for &'a MerkleMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K: TrieKey, V: Clone> FromIterator<(K, V)> for MerkleMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = MerkleMap::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl<K: TrieKey, V> Index<&K> for MerkleMap<K, V> {
    type Output = V;
    fn index(&self, key: &K) -> &V {
        self.get(key).expect("key not in the map")
    }
}

impl<K: PartialEq, V: PartialEq> PartialEq for MerkleMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        let same_root = match (&self.root, &other.root) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_root || (self.len() == other.len() && self.iter().eq(other.iter()))
    }
}

impl<K: Eq, V: Eq> Eq for MerkleMap<K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for MerkleMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Encoded as a `BTreeMap` is: the entry count, then the entries in ascending key order.
impl<K: BorshSerialize, V: BorshSerialize> BorshSerialize for MerkleMap<K, V> {
    fn serialize<W: std::io::Write>(&self, writer: &mut W) -> std::io::Result<()> {
        let len = u32::try_from(self.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "map too large to encode")
        })?;
        len.serialize(writer)?;
        for (k, v) in self.iter() {
            k.serialize(writer)?;
            v.serialize(writer)?;
        }
        Ok(())
    }
}

/// Refuses entries out of ascending key order or repeated, so one map has one encoding.
impl<K, V> BorshDeserialize for MerkleMap<K, V>
where
    K: BorshDeserialize + TrieKey,
    V: BorshDeserialize + Clone,
{
    fn deserialize_reader<R: std::io::Read>(reader: &mut R) -> std::io::Result<Self> {
        let len = u32::deserialize_reader(reader)?;
        let mut m = MerkleMap::new();
        let mut last: Option<K> = None;
        for _ in 0..len {
            let k = K::deserialize_reader(reader)?;
            let v = V::deserialize_reader(reader)?;
            if last.as_ref().is_some_and(|l| *l >= k) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "map keys are not in strictly ascending order",
                ));
            }
            last = Some(k.clone());
            m.insert(k, v);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
        /// Add to the value in place (through `get_mut`).
        Bump(u16, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        // A small key space, so removals and updates hit existing keys often.
        prop_oneof![
            (0u16..200, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0u16..200).prop_map(Op::Remove),
            (0u16..200, 1u32..1000).prop_map(|(k, d)| Op::Bump(k, d)),
        ]
    }

    fn run(m: &mut MerkleMap<u16, u32>, reference: &mut BTreeMap<u16, u32>, op: &Op) {
        match *op {
            Op::Insert(k, v) => assert_eq!(m.insert(k, v), reference.insert(k, v)),
            Op::Remove(k) => assert_eq!(m.remove(&k), reference.remove(&k)),
            Op::Bump(k, d) => {
                let got = m.get_mut(&k).map(|v| {
                    *v = v.wrapping_add(d);
                    *v
                });
                let want = reference.get_mut(&k).map(|v| {
                    *v = v.wrapping_add(d);
                    *v
                });
                assert_eq!(got, want);
            }
        }
    }

    /// The root computed from scratch by inserting the contents in ascending order.
    fn fresh_root(reference: &BTreeMap<u16, u32>) -> Hash {
        reference
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect::<MerkleMap<_, _>>()
            .root()
    }

    /// Branch bits grow downwards, every key sits on the side its bit says, and counts hold,
    /// so the shape is the one the contents determine. Returns (entries, depth).
    fn check_shape<K: TrieKey, V>(node: &Node<K, V>, min_bit: u32) -> (usize, usize) {
        match node {
            Node::Leaf { key, bits, .. } => {
                assert_eq!(*bits, key.to_trie_bytes());
                (1, 0)
            }
            Node::Branch {
                bit: b,
                left,
                right,
                len,
                ..
            } => {
                assert!(*b >= min_bit, "branch bits grow downwards");
                for (side, child) in [(false, left), (true, right)] {
                    let mut stack = vec![&**child];
                    while let Some(n) = stack.pop() {
                        match n {
                            Node::Leaf { bits, .. } => assert_eq!(bit(bits, *b), side),
                            Node::Branch { left, right, .. } => stack.extend([&**left, &**right]),
                        }
                    }
                }
                let (l, dl) = check_shape(left, b + 1);
                let (r, dr) = check_shape(right, b + 1);
                assert_eq!(*len, l + r);
                (l + r, 1 + dl.max(dr))
            }
        }
    }

    proptest! {
        #[test]
        fn behaves_as_an_ordered_map_and_its_root_depends_only_on_its_contents(
            ops in proptest::collection::vec(op(), 0..300)
        ) {
            let mut m = MerkleMap::new();
            let mut reference = BTreeMap::new();
            for (i, op) in ops.iter().enumerate() {
                run(&mut m, &mut reference, op);
                // Take the root now and then, so cached hashes exist to go stale.
                if i % 7 == 0 {
                    let _ = m.root();
                }
            }
            if let Some(root) = &m.root {
                check_shape(root, 0);
            }
            prop_assert_eq!(m.len(), reference.len());
            prop_assert!(m.iter().map(|(k, v)| (*k, *v)).eq(reference.clone()));
            prop_assert_eq!(m.root(), fresh_root(&reference));
        }

        #[test]
        fn a_clone_is_untouched_by_changes_to_the_original_and_the_diff_between_them_is_exact(
            before in proptest::collection::vec(op(), 0..200),
            after in proptest::collection::vec(op(), 0..40),
        ) {
            let mut m = MerkleMap::new();
            let mut reference = BTreeMap::new();
            for op in &before {
                run(&mut m, &mut reference, op);
            }
            let old = m.clone();
            let old_root = old.root();
            let old_reference = reference.clone();
            for op in &after {
                run(&mut m, &mut reference, op);
            }
            prop_assert!(old.iter().map(|(k, v)| (*k, *v)).eq(old_reference.clone()));
            prop_assert_eq!(old.root(), old_root);
            prop_assert_eq!(m.root(), fresh_root(&reference));

            // Replaying the diff on the old contents gives the new ones, and it names only keys
            // whose value changed.
            let mut replay = old_reference.clone();
            for change in m.changes_since(&old) {
                match change {
                    Change::Put(k, v) => {
                        prop_assert_ne!(old_reference.get(k), Some(v));
                        replay.insert(*k, *v);
                    }
                    Change::Delete(k) => {
                        prop_assert!(old_reference.contains_key(k));
                        replay.remove(k);
                    }
                }
            }
            prop_assert_eq!(replay, reference);
        }

        #[test]
        fn the_encoding_is_a_btreemaps_and_decodes_back(
            ops in proptest::collection::vec(op(), 0..200)
        ) {
            let mut m = MerkleMap::new();
            let mut reference = BTreeMap::new();
            for op in &ops {
                run(&mut m, &mut reference, op);
            }
            let bytes = borsh::to_vec(&m).unwrap();
            prop_assert_eq!(&bytes, &borsh::to_vec(&reference).unwrap());
            let back: MerkleMap<u16, u32> = borsh::from_slice(&bytes).unwrap();
            prop_assert_eq!(back.root(), m.root());
        }
    }

    #[test]
    fn a_change_to_one_value_changes_the_root_and_undoing_it_restores_it() {
        let mut m: MerkleMap<u16, u32> = (0..100).map(|k| (k, u32::from(k))).collect();
        let root = m.root();
        *m.get_mut(&42).unwrap() += 1;
        assert_ne!(m.root(), root);
        *m.get_mut(&42).unwrap() -= 1;
        assert_eq!(m.root(), root);
    }

    #[test]
    fn a_diff_after_one_change_skips_the_shared_subtrees() {
        let old: MerkleMap<u32, u32> = (0..10_000).map(|k| (k, k)).collect();
        let mut new = old.clone();
        *new.get_mut(&5_000).unwrap() = 7;
        new.insert(20_000, 1);
        new.remove(&3);
        let (changes, opened) = new.diff(&old);
        // Three paths of about log2(10⁴) ≈ 14 nodes each, in both versions.
        assert!(opened < 400, "opened {opened} subtrees of 10,000 entries");
        assert_eq!(
            changes,
            vec![
                Change::Delete(&3),
                Change::Put(&5_000, &7),
                Change::Put(&20_000, &1)
            ]
        );
    }

    #[test]
    fn chosen_keys_cannot_make_the_tree_deeper_than_a_key_has_bits() {
        // The keys that make a path as long as possible: each differs from the next in one
        // more leading bit (a treap with hash priorities would let ground keys go far deeper).
        let mut m: MerkleMap<u64, u8> = (0..64).map(|i| (u64::MAX >> i, 0)).collect();
        m.insert(0, 0);
        let (len, depth) = check_shape(m.root.as_ref().unwrap(), 0);
        assert_eq!(len, 65);
        assert_eq!(depth, 64);
        // Addresses a stranger picks freely: 32 bytes, so at most 256 levels.
        let mut a = [0u8; 32];
        let mut accounts = MerkleMap::new();
        for i in 0..256 {
            a[i / 8] |= 0x80 >> (i % 8);
            accounts.insert(Address(a), 1u8);
        }
        let (_, depth) = check_shape(accounts.root.as_ref().unwrap(), 0);
        assert!(depth <= 256, "depth {depth}");
        assert_ne!(accounts.root(), Hash::ZERO);
    }

    #[test]
    fn keys_of_several_parts_keep_their_order() {
        let keys = [
            (1u64, Address([9; 32]), Role::Validator),
            (2, Address([0; 32]), Role::Miner),
            (2, Address([0; 32]), Role::Validator),
            (2, Address([1; 32]), Role::Miner),
            (256, Address([0; 32]), Role::Miner),
        ];
        let m: MerkleMap<_, ()> = keys.iter().rev().map(|k| (*k, ())).collect();
        assert!(m.keys().copied().eq(keys));
    }

    #[test]
    fn keys_out_of_order_do_not_decode() {
        let mut bytes = borsh::to_vec(&2u32).unwrap();
        for (k, v) in [(5u16, 1u32), (3, 1)] {
            bytes.extend(borsh::to_vec(&k).unwrap());
            bytes.extend(borsh::to_vec(&v).unwrap());
        }
        assert!(borsh::from_slice::<MerkleMap<u16, u32>>(&bytes).is_err());
    }
}
