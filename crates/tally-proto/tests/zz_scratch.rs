use tally_proto::testkit::*;
fn run(n: usize, seed: u64, edits: usize, dup: u32) -> Result<usize, String> {
    let mut net = Net::new(seed, allow_all);
    let clients: Vec<_> = (0..n).map(|_| net.add_client()).collect();
    let shared = net.create_doc(clients[0]);
    for &c in &clients {
        net.connect(c);
    }
    net.run_until_quiet(20000).map_err(|e| format!("a {e}"))?;
    for &c in &clients[1..] {
        net.request(c, shared);
    }
    net.run_until_quiet(20000).map_err(|e| format!("b {e}"))?;
    for &c in &clients {
        net.disconnect(c);
    }
    for (i, &c) in clients.iter().enumerate() {
        let mine = net.create_doc(c);
        for k in 0..edits {
            net.edit(c, shared, &[(&format!("c{i}-{k}"), format!("v{k}"))]);
            net.edit(c, shared, &[("last-writer", format!("c{i}"))]);
            net.edit(c, mine, &[(&format!("k{k}"), format!("v{k}"))]);
        }
    }
    net.set_faults(Faults {
        duplicate_per_mille: dup,
        drop_per_mille: 0,
    });
    let mut order = clients.clone();
    order.rotate_left((seed as usize) % n);
    for &c in &order {
        net.connect(c);
    }
    let mut total = 0;
    for _ in 0..20 {
        match net.run_until_quiet(10000) {
            Ok(s) => return Ok(total + s),
            Err(e) => {
                total += 10000;
                eprintln!("  pending {}", e.pending);
            }
        }
    }
    Err(format!("c storm"))
}
#[test]
fn scratch() {
    let mut fails = 0;
    let mut max_steps = 0;
    for seed in 0..400u64 {
        for dup in [100, 219, 300] {
            match run(3 + (seed % 4) as usize, seed * 7919, 3, dup) {
                Ok(s) => max_steps = max_steps.max(s),
                Err(e) => {
                    fails += 1;
                    println!("seed {seed} dup {dup}: {e}");
                }
            }
        }
    }
    println!("fails {fails} max_steps {max_steps}");
}
