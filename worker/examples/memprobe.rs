// TEMP memory probe, not committed
use chrono::Utc;
use palworker::harness::events;
use palworker::ledger::Ledger;
use palworker_events::*;
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
fn rss() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}
fn main() {
    let dir = std::path::PathBuf::from("/tmp/memprobe-ledger");
    let n: u64 = std::env::var("N")
        .map(|v| v.parse().unwrap())
        .unwrap_or(100_000);
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode == "build" {
        let _ = std::fs::remove_dir_all(&dir);
        let ledger = Ledger::open(&dir, 16 << 20).unwrap();
        let rows = (0..n)
            .map(|i| {
                let (t, p) = (i % 1000, i / 1000);
                (
                    Account {
                        tenant_id: TenantId::parse(&format!("{:08x}-0000-4000-8000-{:012x}", t, t))
                            .unwrap(),
                        object_id: ObjectId::parse(&format!("{:08x}-0001-4000-8000-{:012x}", t, p))
                            .unwrap(),
                        employee_id: EmployeeId::parse(&format!("E-{t}-{p}")).unwrap(),
                        credential: Some(CredentialName::parse(&format!("sp-{p}")).unwrap()),
                        contract_id: None,
                    },
                    Some(PartnerId::parse("1111111").unwrap()),
                )
            })
            .collect::<Vec<_>>();
        ledger.import_accounts(rows, Utc::now()).unwrap();
        ledger.flush().unwrap();
        return;
    }
    let t0 = std::time::Instant::now();
    std::thread::spawn(move || {
        loop {
            eprintln!("  t={:.2} rss={:.1}", t0.elapsed().as_secs_f64(), rss());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    println!("start {:.1}", rss());
    let cache: u64 = std::env::var("CACHE")
        .map(|v| v.parse().unwrap())
        .unwrap_or(16 << 20);
    let ledger = Ledger::open(&dir, cache).unwrap();
    println!("open {:.1}", rss());
    let mut c = 0;
    if mode == "scan" {
        ledger.inventory_list(None, None).map(|v| c = v.len()).ok();
        println!("scan {c} {:.1}", rss());
    }
    let event = Event::from_json_slice(
        &serde_json::to_vec(&events::partner_id_changed("x", "1111111", "2222222", None)).unwrap(),
    )
    .unwrap();
    let out = ledger.accept(&event, None, Utc::now(), usize::MAX).unwrap();
    println!(
        "accept {:.1} {:?}",
        rss(),
        matches!(out, palworker::ledger::AcceptOutcome::Accepted { .. })
    );
    ledger.flush().unwrap();
    println!("flush {:.1}", rss());
    std::thread::sleep(std::time::Duration::from_secs(2));
    println!("later {:.1}", rss());
}
