use pot_protocol::SecretKey;
use pot_protocol::crypto::verify_batch;
use std::time::Instant;
fn main() {
    let keys: Vec<SecretKey> = (0..256u32)
        .map(|i| {
            let mut s = [0u8; 32];
            s[..4].copy_from_slice(&i.to_le_bytes());
            SecretKey::from_seed(s)
        })
        .collect();
    let msgs: Vec<Vec<u8>> = (0..4096u32).map(|i| format!("message number {i} with some padding to be like a tx of about 150 bytes ............................................................").into_bytes()).collect();
    let sigs: Vec<_> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| (keys[i % 256].address(), keys[i % 256].sign(m)))
        .collect();
    for n in [1usize, 8, 32, 64, 128, 256, 512, 1024, 4096] {
        let items: Vec<_> = (0..n)
            .map(|i| (sigs[i].0, msgs[i].as_slice(), sigs[i].1))
            .collect();
        let reps = (20000 / n).max(3);
        assert!(verify_batch(&items));
        let t = Instant::now();
        for _ in 0..reps {
            assert!(verify_batch(&items));
        }
        let per = t.elapsed().as_secs_f64() * 1e6 / (reps * n) as f64;
        println!("batch {n:5}: {per:6.2} us/sig");
    }
    let t = Instant::now();
    for i in 0..2000 {
        sigs[i % 4096]
            .0
            .verify(&msgs[i % 4096], &sigs[i % 4096].1)
            .unwrap();
    }
    println!("single: {:.2} us", t.elapsed().as_secs_f64() * 1e6 / 2000.0);
}
