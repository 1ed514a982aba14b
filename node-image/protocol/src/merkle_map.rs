//! `MerkleMap`: the ordered map the ledger state keeps its accounts, stakes, tasks and
//! reputation in. Three properties make a block's cost grow with its transactions rather than
//! with the size of the state:
//!
//! - **persistent**: a clone shares every node, and a change copies only the path to it
//!   (expected O(log n) nodes), so applying a block to a copy of the state costs what the block
//!   touches;
//! - **Merkleised**: every node caches the hash of its subtree, computed on first use, so the
//!   root after a block rehashes only the nodes the block created;
//! - **diffable**: [`MerkleMap::changes_since`] walks two versions and skips the subtrees they
//!   share, so the store writes only the rows a block changed.
//!
//! It is a treap whose priorities are hashes of the keys, so its shape, and with it the root,
//! depends only on its contents, never on the order of insertions and removals: every node
//! computes the same root for the same state. (Written here rather than taken from a crate: the
//! Merkle trees on crates.io — jmt, sparse-merkle-tree, merk — come with their own storage
//! layers and versioning, and the state machine must stay pure and in memory.)
//!
//! Hashes: an empty subtree is `Hash::ZERO`; a node is
//! `tagged("pot/map/node", left ‖ tagged("pot/map/entry", key ‖ value) ‖ right)` over the
//! borsh encodings of key and value.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Index;
use std::sync::{Arc, OnceLock};

use borsh::{BorshDeserialize, BorshSerialize};

use crate::encoding::encode;
use crate::hash::Hash;

type Link<K, V> = Option<Arc<Node<K, V>>>;

struct Node<K, V> {
    key: K,
    /// Shared, so copying a node on the path of a change never copies its value.
    value: Arc<V>,
    /// Heap order: a node's priority is above its children's.
    priority: Hash,
    left: Link<K, V>,
    right: Link<K, V>,
    /// Entries in this subtree.
    len: usize,
    /// This subtree's hash, once computed; reset on every change below it.
    hash: OnceLock<Hash>,
    /// The hash of this node's own entry, once computed; reset when its value changes (a
    /// change below it rehashes the node, not its entry).
    entry: OnceLock<Hash>,
}

impl<K: Clone, V> Clone for Node<K, V> {
    fn clone(&self) -> Self {
        Node {
            key: self.key.clone(),
            value: self.value.clone(),
            priority: self.priority,
            left: self.left.clone(),
            right: self.right.clone(),
            len: self.len,
            hash: self.hash.clone(),
            entry: self.entry.clone(),
        }
    }
}

fn priority_of<K: BorshSerialize>(key: &K) -> Hash {
    Hash::of_value("pot/map/priority", key)
}

fn len_of<K, V>(link: &Link<K, V>) -> usize {
    link.as_ref().map_or(0, |n| n.len)
}

impl<K, V> Node<K, V> {
    /// Recount after a change to the children, and forget the stale hash.
    fn changed(&mut self) {
        self.len = 1 + len_of(&self.left) + len_of(&self.right);
        self.hash = OnceLock::new();
    }
}

impl<K: BorshSerialize, V: BorshSerialize> Node<K, V> {
    fn hash(&self) -> Hash {
        *self.hash.get_or_init(|| {
            let entry = self.entry.get_or_init(|| {
                Hash::tagged(
                    "pot/map/entry",
                    &[&encode(&self.key), &encode(&*self.value)],
                )
            });
            Hash::tagged(
                "pot/map/node",
                &[
                    hash_of(&self.left).as_bytes(),
                    entry.as_bytes(),
                    hash_of(&self.right).as_bytes(),
                ],
            )
        })
    }
}

fn hash_of<K: BorshSerialize, V: BorshSerialize>(link: &Link<K, V>) -> Hash {
    link.as_ref().map_or(Hash::ZERO, |n| n.hash())
}

/// Lift the left child above `link`'s node.
fn rotate_right<K: Clone, V>(link: &mut Link<K, V>) {
    let mut top = link.take().expect("a node to rotate");
    let t = Arc::make_mut(&mut top);
    let mut left = t.left.take().expect("a left child to lift");
    let l = Arc::make_mut(&mut left);
    t.left = l.right.take();
    t.changed();
    l.right = Some(top);
    l.changed();
    *link = Some(left);
}

/// Lift the right child above `link`'s node.
fn rotate_left<K: Clone, V>(link: &mut Link<K, V>) {
    let mut top = link.take().expect("a node to rotate");
    let t = Arc::make_mut(&mut top);
    let mut right = t.right.take().expect("a right child to lift");
    let r = Arc::make_mut(&mut right);
    t.right = r.left.take();
    t.changed();
    r.left = Some(top);
    r.changed();
    *link = Some(right);
}

fn insert<K: Ord + Clone, V>(
    link: &mut Link<K, V>,
    key: K,
    value: Arc<V>,
    priority: Hash,
) -> Option<Arc<V>> {
    let Some(arc) = link else {
        *link = Some(Arc::new(Node {
            key,
            value,
            priority,
            left: None,
            right: None,
            len: 1,
            hash: OnceLock::new(),
            entry: OnceLock::new(),
        }));
        return None;
    };
    let node = Arc::make_mut(arc);
    match key.cmp(&node.key) {
        Ordering::Equal => {
            let old = std::mem::replace(&mut node.value, value);
            node.entry = OnceLock::new();
            node.changed();
            Some(old)
        }
        Ordering::Less => {
            let old = insert(&mut node.left, key, value, priority);
            node.changed();
            if node
                .left
                .as_ref()
                .is_some_and(|l| l.priority > node.priority)
            {
                rotate_right(link);
            }
            old
        }
        Ordering::Greater => {
            let old = insert(&mut node.right, key, value, priority);
            node.changed();
            if node
                .right
                .as_ref()
                .is_some_and(|r| r.priority > node.priority)
            {
                rotate_left(link);
            }
            old
        }
    }
}

/// Join two treaps whose keys are all smaller in `a` than in `b`.
fn merge<K: Clone, V>(a: Link<K, V>, b: Link<K, V>) -> Link<K, V> {
    match (a, b) {
        (None, b) => b,
        (a, None) => a,
        (Some(mut a), Some(mut b)) => {
            if a.priority > b.priority {
                let n = Arc::make_mut(&mut a);
                let right = n.right.take();
                n.right = merge(right, Some(b));
                n.changed();
                Some(a)
            } else {
                let n = Arc::make_mut(&mut b);
                let left = n.left.take();
                n.left = merge(Some(a), left);
                n.changed();
                Some(b)
            }
        }
    }
}

/// Remove `key`, which the subtree at `link` holds.
fn remove<K: Ord + Clone, V>(link: &mut Link<K, V>, key: &K) -> Arc<V> {
    let arc = link.as_mut().expect("the key is present");
    match key.cmp(&arc.key) {
        Ordering::Equal => {
            let gone = link.take().expect("matched");
            *link = merge(gone.left.clone(), gone.right.clone());
            gone.value.clone()
        }
        Ordering::Less => {
            let node = Arc::make_mut(arc);
            let old = remove(&mut node.left, key);
            node.changed();
            old
        }
        Ordering::Greater => {
            let node = Arc::make_mut(arc);
            let old = remove(&mut node.right, key);
            node.changed();
            old
        }
    }
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
        len_of(&self.root)
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_none()
    }

    /// Entries in ascending key order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        let mut it = Iter {
            stack: Vec::new(),
            remaining: self.len(),
        };
        it.descend_left(&self.root);
        it
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Ord, V> MerkleMap<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        let mut link = &self.root;
        while let Some(n) = link {
            match key.cmp(&n.key) {
                Ordering::Equal => return Some(&n.value),
                Ordering::Less => link = &n.left,
                Ordering::Greater => link = &n.right,
            }
        }
        None
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }
}

impl<K: Ord + Clone + BorshSerialize, V: Clone> MerkleMap<K, V> {
    /// Insert or replace; the previous value if there was one.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let priority = priority_of(&key);
        insert(&mut self.root, key, Arc::new(value), priority).map(unwrap_or_clone)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        if !self.contains_key(key) {
            return None;
        }
        Some(unwrap_or_clone(remove(&mut self.root, key)))
    }

    /// The value at `key`, to change in place. The path to it is copied (if shared with another
    /// version) and its cached hashes are forgotten before the reference is handed out.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if !self.contains_key(key) {
            return None;
        }
        let mut link = &mut self.root;
        loop {
            let node = Arc::make_mut(link.as_mut().expect("the key is present"));
            node.hash = OnceLock::new();
            match key.cmp(&node.key) {
                Ordering::Equal => {
                    node.entry = OnceLock::new();
                    return Some(Arc::make_mut(&mut node.value));
                }
                Ordering::Less => link = &mut node.left,
                Ordering::Greater => link = &mut node.right,
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

impl<K: BorshSerialize, V: BorshSerialize> MerkleMap<K, V> {
    /// The Merkle root: equal for equal contents, whatever the history.
    pub fn root(&self) -> Hash {
        hash_of(&self.root)
    }
}

/// A difference between two versions of a map, in ascending key order.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a, K, V> {
    /// The key is new, or its value differs.
    Put(&'a K, &'a V),
    Delete(&'a K),
}

/// Work left in an in-order walk: a whole subtree, or one node's own entry.
enum Pending<'a, K, V> {
    Tree(&'a Arc<Node<K, V>>),
    Entry(&'a Node<K, V>),
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
    /// Subtrees expanded so far.
    opened: usize,
}

impl<'a, K, V> Walk<'a, K, V> {
    fn new(root: &'a Link<K, V>) -> Self {
        let mut w = Walk {
            stack: Vec::new(),
            opened: 0,
        };
        w.push(root);
        w
    }

    fn push(&mut self, link: &'a Link<K, V>) {
        if let Some(n) = link {
            self.stack.push(Pending::Tree(n));
        }
    }

    fn top(&self) -> Option<Pending<'a, K, V>> {
        self.stack.last().copied()
    }

    /// Replace the subtree on top by its left subtree, its own entry and its right subtree.
    fn expand(&mut self) {
        if let Some(Pending::Tree(n)) = self.stack.pop() {
            self.opened += 1;
            self.push(&n.right);
            self.stack.push(Pending::Entry(n));
            self.push(&n.left);
        }
    }
}

fn min_key<K, V>(mut n: &Node<K, V>) -> &K {
    while let Some(l) = &n.left {
        n = l;
    }
    &n.key
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
                        // Expand the bigger one: a shared subtree is never bigger than a tree
                        // that contains it, so it stays whole until both sides reach it.
                        if a.len >= b.len {
                            o.expand();
                        }
                        if b.len >= a.len {
                            n.expand();
                        }
                    }
                }
                (Some(Tree(t)), Some(Entry(e))) => {
                    if e.key < *min_key(t) {
                        out.push(Change::Put(&e.key, &*e.value));
                        n.stack.pop();
                    } else {
                        o.expand();
                    }
                }
                (Some(Entry(e)), Some(Tree(t))) => {
                    if e.key < *min_key(t) {
                        out.push(Change::Delete(&e.key));
                        o.stack.pop();
                    } else {
                        n.expand();
                    }
                }
                (Some(Tree(_)), None) => o.expand(),
                (None, Some(Tree(_))) => n.expand(),
                (Some(Entry(e)), None) => {
                    out.push(Change::Delete(&e.key));
                    o.stack.pop();
                }
                (None, Some(Entry(e))) => {
                    out.push(Change::Put(&e.key, &*e.value));
                    n.stack.pop();
                }
                (Some(Entry(a)), Some(Entry(b))) => match a.key.cmp(&b.key) {
                    Ordering::Less => {
                        out.push(Change::Delete(&a.key));
                        o.stack.pop();
                    }
                    Ordering::Greater => {
                        out.push(Change::Put(&b.key, &*b.value));
                        n.stack.pop();
                    }
                    Ordering::Equal => {
                        if !(Arc::ptr_eq(&a.value, &b.value) || a.value == b.value) {
                            out.push(Change::Put(&b.key, &*b.value));
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
    /// Nodes whose entry and right subtree are still to come; the next one on top.
    stack: Vec<&'a Node<K, V>>,
    remaining: usize,
}

impl<'a, K, V> Iter<'a, K, V> {
    fn descend_left(&mut self, mut link: &'a Link<K, V>) {
        while let Some(n) = link {
            self.stack.push(n);
            link = &n.left;
        }
    }
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let n = self.stack.pop()?;
        self.descend_left(&n.right);
        self.remaining -= 1;
        Some((&n.key, &*n.value))
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

impl<K: Ord + Clone + BorshSerialize, V: Clone> FromIterator<(K, V)> for MerkleMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = MerkleMap::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl<K: Ord, V> Index<&K> for MerkleMap<K, V> {
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
    K: BorshDeserialize + BorshSerialize + Ord + Clone,
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

    /// Heap order and counts hold everywhere, so the shape is the one the contents determine.
    fn check_shape(link: &Link<u16, u32>) -> usize {
        let Some(n) = link else { return 0 };
        for child in [&n.left, &n.right].into_iter().flatten() {
            assert!(child.priority < n.priority, "heap order");
        }
        let len = 1 + check_shape(&n.left) + check_shape(&n.right);
        assert_eq!(n.len, len);
        len
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
            check_shape(&m.root);
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
        // Three paths of about 2·ln(10⁴) ≈ 18 nodes each, in both versions.
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
    fn keys_out_of_order_do_not_decode() {
        let mut bytes = borsh::to_vec(&2u32).unwrap();
        for (k, v) in [(5u16, 1u32), (3, 1)] {
            bytes.extend(borsh::to_vec(&k).unwrap());
            bytes.extend(borsh::to_vec(&v).unwrap());
        }
        assert!(borsh::from_slice::<MerkleMap<u16, u32>>(&bytes).is_err());
    }
}
