//! The Merkle tree of RFC 9162 (Certificate Transparency v2) over a list of hashes, with
//! inclusion proofs. Leaves and interior nodes are hashed with different prefixes and an odd
//! subtree is never duplicated, so no two lists share a root and proofs cannot be forged by
//! presenting an interior node as a leaf.
//!
//! Miners commit to the root over their checkpoint hashes; validators check a sampled checkpoint
//! against it with a proof. Blocks use the same tree for their transaction root.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hash::Hash;

fn leaf_hash(leaf: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf.0);
    Hash(h.finalize().into())
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

/// The largest power of two strictly below `n` (for `n >= 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The root over `leaves` (the empty list has the hash of the empty string).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Hash::digest(b""),
        1 => leaf_hash(&leaves[0]),
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// An inclusion proof: the sibling hashes from the leaf up to the root.
#[derive(
    Clone, Debug, PartialEq, Eq, Default, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct Proof {
    pub index: u64,
    pub tree_size: u64,
    pub path: Vec<Hash>,
}

/// The proof that `leaves[index]` is in the tree; `None` if `index` is out of range.
pub fn prove(leaves: &[Hash], index: usize) -> Option<Proof> {
    if index >= leaves.len() {
        return None;
    }
    let mut path = Vec::new();
    audit_path(leaves, index, &mut path);
    Some(Proof {
        index: index as u64,
        tree_size: leaves.len() as u64,
        path,
    })
}

fn audit_path(leaves: &[Hash], index: usize, path: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if index < k {
        audit_path(&leaves[..k], index, path);
        path.push(root(&leaves[k..]));
    } else {
        audit_path(&leaves[k..], index - k, path);
        path.push(root(&leaves[..k]));
    }
}

impl Proof {
    /// Whether this proof shows `leaf` at `self.index` in a tree of `self.tree_size` leaves with
    /// root `root` (the algorithm of RFC 9162 §2.1.3.2).
    pub fn verify(&self, root: &Hash, leaf: &Hash) -> bool {
        if self.index >= self.tree_size {
            return false;
        }
        let (mut f, mut s) = (self.index, self.tree_size - 1);
        let mut r = leaf_hash(leaf);
        for p in &self.path {
            if s == 0 {
                return false;
            }
            if f & 1 == 1 || f == s {
                r = node_hash(p, &r);
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            } else {
                r = node_hash(&r, p);
            }
            f >>= 1;
            s >>= 1;
        }
        s == 0 && r == *root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| Hash::digest(&(i as u64).to_le_bytes()))
            .collect()
    }

    #[test]
    fn empty_and_single_roots() {
        assert_eq!(
            root(&[]).to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let l = leaves(1);
        assert_eq!(root(&l), leaf_hash(&l[0]));
    }

    #[test]
    fn three_leaves_shape() {
        // RFC 9162: MTH(D[3]) = HASH(0x01 || MTH(D[0:2]) || MTH(D[2:3])).
        let l = leaves(3);
        let left = node_hash(&leaf_hash(&l[0]), &leaf_hash(&l[1]));
        assert_eq!(root(&l), node_hash(&left, &leaf_hash(&l[2])));
    }

    #[test]
    fn every_proof_verifies_and_tampering_fails() {
        for n in 1..=33 {
            let l = leaves(n);
            let r = root(&l);
            for i in 0..n {
                let p = prove(&l, i).unwrap();
                assert!(p.verify(&r, &l[i]), "n={n} i={i}");
                // Wrong leaf, wrong index, wrong size, wrong root, truncated and extended paths.
                assert!(!p.verify(&r, &Hash::digest(b"other")));
                let wrong_index = Proof {
                    index: ((i + 1) % n) as u64,
                    ..p.clone()
                };
                if n > 1 {
                    assert!(!wrong_index.verify(&r, &l[i]), "n={n} i={i}");
                }
                assert!(!p.verify(&Hash::digest(b"root"), &l[i]));
                if !p.path.is_empty() {
                    let mut short = p.clone();
                    short.path.pop();
                    assert!(!short.verify(&r, &l[i]));
                    let mut flipped = p.clone();
                    flipped.path[0].0[0] ^= 1;
                    assert!(!flipped.verify(&r, &l[i]));
                }
                let mut long = p.clone();
                long.path.push(Hash::ZERO);
                assert!(!long.verify(&r, &l[i]));
            }
            assert!(prove(&l, n).is_none());
        }
    }

    #[test]
    fn roots_differ_for_different_lists() {
        // Duplicating the last leaf (the Bitcoin construction's weakness) changes the root.
        let mut l = leaves(3);
        let r3 = root(&l);
        l.push(l[2]);
        assert_ne!(root(&l), r3);
    }

    #[test]
    fn interior_node_is_not_a_leaf() {
        let l = leaves(4);
        let r = root(&l);
        let interior = node_hash(&leaf_hash(&l[0]), &leaf_hash(&l[1]));
        let p = Proof {
            index: 0,
            tree_size: 2,
            path: vec![node_hash(&leaf_hash(&l[2]), &leaf_hash(&l[3]))],
        };
        assert!(!p.verify(&r, &interior));
    }
}
