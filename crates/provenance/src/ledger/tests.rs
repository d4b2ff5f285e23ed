use super::*;

/// Public-domain prose (Lewis Carroll, L. Frank Baum) standing in for
/// generations.
const ALICE: &str = "Either the well was very deep, or she fell very slowly, for she had \
plenty of time as she went down to look about her and to wonder what was going to happen \
next. First, she tried to look down and make out what she was coming to, but it was too \
dark to see anything; then she looked at the sides of the well, and noticed that they were \
filled with cupboards and book-shelves; here and there she saw maps and pictures hung upon \
pegs. She took down a jar from one of the shelves as she passed; it was labelled 'ORANGE \
MARMALADE', but to her great disappointment it was empty: she did not like to drop the jar \
for fear of killing somebody, so managed to put it into one of the cupboards as she fell \
past it.";

const OZ: &str = "When Aunt Em came there to live she was a young, pretty wife. The sun and \
wind had changed her, too. They had taken the sparkle from her eyes and left them a sober \
gray; they had taken the red from her cheeks and lips, and they were gray also. She was thin \
and gaunt, and never smiled now. When Dorothy, who was an orphan, first came to her, Aunt Em \
had been so startled by the child's laughter that she would scream and press her hand upon \
her heart whenever Dorothy's merry voice reached her ears; and she still looked at the \
little girl with wonder that she could find anything to laugh at.";

fn new_record(text: &str) -> NewRecord {
    NewRecord {
        tokens: vec![1, 2, 50256],
        text: text.to_string(),
        watermark_key_id: Some("k1".into()),
        caller: Some("alice@example.org".into()),
        model: Some("gpt2".into()),
    }
}

/// Every `every`-th word replaced by "zebra" and every `drop`-th removed:
/// 12.5% substitutions and 10% deletions for (8, 10).
fn edit(text: &str, every: usize, drop: usize) -> String {
    text.split_whitespace()
        .enumerate()
        .filter(|(i, _)| (i + 1) % drop != 0)
        .map(|(i, w)| if (i + 1) % every == 0 { "zebra" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Opens the ledger of one scenario (again, for a second handle).
type Open<'a> = &'a dyn Fn() -> Ledger;

/// Model output can hold any token, U+0000 included (PostgreSQL's TEXT
/// cannot).
fn a_text_with_nul_is_kept_exactly(open: Open) {
    let mut l = open();
    let text = format!("{ALICE}\u{0} and after the nul");
    let id = l.record(&new_record(&text)).unwrap();
    assert_eq!(l.get(id).unwrap().unwrap().text, Some(text.clone()));
    assert!(l.lookup(&text).unwrap()[0].exact);
    assert!(l.check().unwrap().is_empty());
}

const SCENARIOS: [fn(Open); 8] = [
    a_text_with_nul_is_kept_exactly,
    exact_copy_is_found_with_its_record,
    edited_copy_is_found_by_similarity,
    unrelated_text_matches_nothing,
    texts_without_ngrams_match_only_exactly,
    results_are_sorted_best_first,
    the_minimum_score_must_be_a_fraction,
    batches_are_one_transaction_each,
];

#[test]
fn every_scenario_on_sqlite() {
    for scenario in SCENARIOS {
        let (_d, path) = temp_ledger();
        scenario(&|| Ledger::open(&path).unwrap());
    }
}

#[test]
fn every_scenario_on_postgres() {
    let pg = match gpt2_db::test_cluster::TestCluster::start() {
        Ok(pg) => pg,
        Err(why) => return eprintln!("skipped: no PostgreSQL to test against: {why}"),
    };
    for (i, scenario) in SCENARIOS.into_iter().enumerate() {
        let target = PgTarget::parse(&pg.url(&format!("ledger{i}"))).unwrap();
        scenario(&|| Ledger::open_postgres(&target, false).unwrap());
    }
    // Hash-only: chosen when the tables are made, kept, never downgraded.
    let target = PgTarget::parse(&pg.url("hash_only")).unwrap();
    let mut l = Ledger::open_postgres(&target, true).unwrap();
    let id = l.record(&new_record(ALICE)).unwrap();
    let r = l.get(id).unwrap().unwrap();
    assert_eq!((r.text, r.tokens), (None, None));
    assert_eq!(l.lookup(&edit(ALICE, 8, 10)).unwrap()[0].record_id, id);
    assert!(Ledger::open_postgres(&target, false)
        .unwrap()
        .is_hash_only());
    let texts = PgTarget::parse(&pg.url("ledger0")).unwrap();
    let e = Ledger::open_postgres(&texts, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("hash-only"), "{e}");
    assert!(l.check().unwrap().is_empty());
}

fn temp_ledger() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    (dir, path)
}

fn exact_copy_is_found_with_its_record(open: Open) {
    let mut l = open();
    let other = l.record(&new_record(OZ)).unwrap();
    let id = l.record(&new_record(ALICE)).unwrap();
    assert_ne!(id, other);
    let m = l.lookup(ALICE).unwrap();
    assert_eq!(
        m,
        [Match {
            record_id: id,
            score: 1.0,
            exact: true
        }]
    );
    let r = l.get(id).unwrap().unwrap();
    assert_eq!(r.text.as_deref(), Some(ALICE));
    assert_eq!(r.tokens, Some(vec![1, 2, 50256]));
    assert_eq!(r.sha256, sha256_hex(ALICE));
    assert_eq!(r.caller.as_deref(), Some("alice@example.org"));
    assert_eq!(r.watermark_key_id.as_deref(), Some("k1"));
    assert_eq!(r.model.as_deref(), Some("gpt2"));
    assert!(r.created > 1_600_000_000);
    assert!(r.ngrams > 100);
    assert!(l.get(id + 100).unwrap().is_none());
    assert!(l.check().unwrap().is_empty());
}

fn edited_copy_is_found_by_similarity(open: Open) {
    let mut l = open();
    l.record(&new_record(OZ)).unwrap();
    let id = l.record(&new_record(ALICE)).unwrap();
    let edited = edit(ALICE, 8, 10);
    let m = l.lookup(&edited).unwrap();
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].record_id, id);
    assert!(!m[0].exact);
    assert!(m[0].score > DEFAULT_MIN_SCORE && m[0].score < 1.0, "{m:?}");
    // Case, punctuation and line breaks do not count as edits.
    let reformatted = ALICE
        .to_uppercase()
        .replace([',', ';'], " ")
        .replace(' ', "\n");
    let m = l.lookup(&reformatted).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].score, m[0].exact), (1.0, false));
}

fn unrelated_text_matches_nothing(open: Open) {
    let mut l = open();
    l.record(&new_record(ALICE)).unwrap();
    assert!(l.lookup(OZ).unwrap().is_empty());
    // Even at threshold 0 only LSH candidates are scored, and an unrelated
    // text shares no band key.
    assert!(l.lookup_with(OZ, 0.0).unwrap().is_empty());
}

fn texts_without_ngrams_match_only_exactly(open: Open) {
    let mut l = open();
    let id = l.record(&new_record("Hi there")).unwrap();
    assert_eq!(l.get(id).unwrap().unwrap().ngrams, 0);
    assert_eq!(l.lookup("Hi there").unwrap().len(), 1);
    assert!(l.lookup("hi there").unwrap().is_empty());
    assert!(l.check().unwrap().is_empty());
}

fn results_are_sorted_best_first(open: Open) {
    let mut l = open();
    let far = l.record(&new_record(&edit(ALICE, 5, 7))).unwrap();
    let near = l.record(&new_record(&edit(ALICE, 20, 1000))).unwrap();
    let same = l.record(&new_record(ALICE)).unwrap();
    let ids: Vec<i64> = l
        .lookup(ALICE)
        .unwrap()
        .iter()
        .map(|m| m.record_id)
        .collect();
    assert_eq!(ids, [same, near, far]);
}

fn the_minimum_score_must_be_a_fraction(open: Open) {
    let mut l = open();
    for bad in [-0.1, 1.5, f64::NAN] {
        let e = l.lookup_with(ALICE, bad).unwrap_err().to_string();
        assert!(
            e.contains(l.location()) && e.contains("between 0 and 1"),
            "{e}"
        );
    }
}

#[test]
fn records_survive_reopening() {
    let (_d, path) = temp_ledger();
    let id = Ledger::open(&path)
        .unwrap()
        .record(&new_record(ALICE))
        .unwrap();
    let mut l = Ledger::open(&path).unwrap();
    assert_eq!(l.lookup(ALICE).unwrap()[0].record_id, id);
    assert_eq!(l.stats().unwrap().records, 1);
    assert_eq!(l.stats().unwrap().lsh_rows, BANDS as i64);
}

/// All bytes of the ledger's files: the main file and any WAL left.
fn file_bytes(path: &Path) -> Vec<u8> {
    let mut all = std::fs::read(path).unwrap();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if let Ok(b) = std::fs::read(PathBuf::from(wal)) {
        all.extend(b);
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn hash_only_ledgers_keep_no_text() {
    let (_d, path) = temp_ledger();
    let mut l = Ledger::open_hash_only(&path).unwrap();
    assert!(l.is_hash_only());
    let id = l.record(&new_record(ALICE)).unwrap();
    let r = l.get(id).unwrap().unwrap();
    assert_eq!((r.text, r.tokens), (None, None));
    assert_eq!(r.caller.as_deref(), Some("alice@example.org"));
    // Still found, exactly and after edits.
    assert!(l.lookup(ALICE).unwrap()[0].exact);
    assert_eq!(l.lookup(&edit(ALICE, 8, 10)).unwrap()[0].record_id, id);
    // Not a word of the text is in the files, open or closed.
    for needle in ["MARMALADE", "cupboards", "Either the well"] {
        assert!(!contains(&file_bytes(&path), needle), "{needle} stored");
    }
    drop(l);
    for needle in ["MARMALADE", "cupboards", "Either the well"] {
        assert!(!contains(&file_bytes(&path), needle), "{needle} stored");
    }
    // The mode is the ledger's, whatever later opens ask for.
    assert!(Ledger::open(&path).unwrap().is_hash_only());
}

#[test]
fn a_text_keeping_ledger_is_not_reopened_as_hash_only() {
    let (_d, path) = temp_ledger();
    Ledger::open(&path)
        .unwrap()
        .record(&new_record(ALICE))
        .unwrap();
    let e = Ledger::open_hash_only(&path).err().unwrap().to_string();
    assert!(e.contains("ledger.db") && e.contains("hash-only"), "{e}");
    // The ordinary ledger really does keep the text (the check above means
    // something).
    drop(Ledger::open(&path).unwrap());
    assert!(contains(&file_bytes(&path), "MARMALADE"));
}

/// Opening `path` fails naming it, and leaves it byte-identical with no
/// files beside it.
fn refused_unchanged(path: &Path, reason: &str) {
    let before = std::fs::read(path).unwrap();
    let dir = path.parent().unwrap();
    let names = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let listing = names(dir);
    for open in [Ledger::open, Ledger::open_hash_only] {
        let e = open(path).err().expect("refused").to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("not a gpt2 ledger") && e.contains(reason), "{e}");
    }
    assert_eq!(std::fs::read(path).unwrap(), before);
    assert_eq!(names(dir), listing);
}

#[test]
fn a_sqlite_file_that_is_not_a_ledger_is_refused_and_untouched() {
    let (_d, path) = temp_ledger();
    let c = Connection::open(&path).unwrap();
    c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (42);")
        .unwrap();
    drop(c);
    refused_unchanged(&path, "without the gpt2 ledger application id");
    // A WAL-mode database too.
    let (_d2, wal) = temp_ledger();
    let c = Connection::open(&wal).unwrap();
    c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        .unwrap();
    c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (42);")
        .unwrap();
    drop(c);
    refused_unchanged(&wal, "without the gpt2 ledger application id");
}

#[test]
fn other_files_are_refused_and_untouched() {
    let (_d, path) = temp_ledger();
    std::fs::write(&path, "hello, world\n").unwrap();
    refused_unchanged(&path, "not a SQLite database");
    std::fs::write(&path, "").unwrap();
    refused_unchanged(&path, "empty");
    let mut fake = b"SQLite format 3\0".to_vec();
    fake.extend([0xAB; 200]);
    std::fs::write(&path, &fake).unwrap();
    refused_unchanged(&path, "application id");
}

#[test]
fn a_missing_directory_is_named() {
    let (d, _) = temp_ledger();
    let path = d.path().join("no/such/dir/ledger.db");
    let e = Ledger::open(&path).err().unwrap().to_string();
    assert!(
        e.contains("no/such/dir") && e.contains("not a directory"),
        "{e}"
    );
}

fn batches_are_one_transaction_each(open: Open) {
    let mut l = open();
    let ids = l
        .record_batch(&[new_record(ALICE), new_record(OZ)])
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(l.lookup(OZ).unwrap()[0].record_id, ids[1]);
    assert_eq!(l.stats().unwrap().records, 2);
}

#[test]
fn signatures_are_pinned() {
    // The hashes are part of the file format: a ledger written on one
    // machine must be searchable on every other, by every later version.
    let set = shingle::ngram_set("The quick brown fox jumps over the lazy dog");
    let sig = minhash::signature(&set).unwrap();
    let keys = minhash::band_keys(&sig);
    assert_eq!(set.len(), 7);
    assert_eq!(
        (sig[0], sig[127], keys[0]),
        (710911923096219555, 2063076661433920, -2119387535445501529)
    );
}
