//! The model test: random sequences of the supported commands get the same replies
//! from meridian (embedded store) as from a real Redis.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::net::SocketAddr;

use support::{
    Client, Process, Resp, redis_dc_topology, single_dc_topology, start_meridian, start_redis,
};

/// A small deterministic generator (xorshift64*), so a failing seed can be rerun.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const KEYS: &[&str] = &["{u}:a", "{u}:b", "{u}:c", "{u}:h", "{u}:g"];
const FIELDS: &[&str] = &["f1", "f2", "f3"];
const VALUES: &[&str] = &[
    "0",
    "1",
    "-7",
    "42",
    "x",
    "hello",
    "9223372036854775807",
    "",
];

fn command(rng: &mut Rng) -> Vec<String> {
    let key = rng.pick(KEYS).to_string();
    let val = rng.pick(VALUES).to_string();
    let field = rng.pick(FIELDS).to_string();
    let num = ["1", "5", "-3", "100", "abc"][rng.below(5)].to_string();
    let pick = rng.below(106);
    if pick >= 100 {
        return keyspace_command(rng, pick, key);
    }
    if pick >= 76 {
        return zset_command(rng, pick, key);
    }
    if pick >= 60 {
        return list_command(rng, pick, key);
    }
    if pick >= 46 {
        return set_command(rng, pick, key);
    }
    if pick >= 30 {
        return newer_command(rng, pick, key, val, field, num);
    }
    let parts: Vec<String> = match pick {
        0 | 1 => vec!["GET".into(), key],
        2 | 3 => {
            let mut c = vec!["SET".into(), key, val];
            for opt in [["NX"], ["XX"], ["GET"], ["KEEPTTL"]] {
                if rng.below(5) == 0 {
                    c.push(opt[0].into());
                }
            }
            if rng.below(4) == 0 {
                c.extend(["EX".into(), "1000".into()]);
            }
            c
        }
        4 => vec!["SETNX".into(), key, val],
        5 => vec!["GETDEL".into(), key],
        6 => vec!["MGET".into(), key, rng.pick(KEYS).into()],
        7 => vec![
            "MSET".into(),
            key,
            val,
            rng.pick(KEYS).into(),
            rng.pick(VALUES).into(),
        ],
        8 => vec!["APPEND".into(), key, val],
        9 => vec!["STRLEN".into(), key],
        10 => vec!["INCR".into(), key],
        11 => vec!["INCRBY".into(), key, num],
        12 => vec!["DECR".into(), key],
        13 => vec!["DECRBY".into(), key, num],
        14 => vec!["DEL".into(), key, rng.pick(KEYS).into()],
        15 => vec!["UNLINK".into(), key],
        16 => vec!["EXISTS".into(), key.clone(), rng.pick(KEYS).into(), key],
        17 => {
            let secs = ["1000", "2000", "-1", "x"][rng.below(4)];
            let mut c = vec!["EXPIRE".into(), key, secs.into()];
            if rng.below(2) == 0 {
                c.push(rng.pick(&["NX", "XX", "GT", "LT"]).into());
            }
            c
        }
        18 => vec!["PEXPIRE".into(), key, "5000000".into()],
        19 => vec![rng.pick(&["TTL", "PTTL"]).into(), key],
        20 => vec!["PERSIST".into(), key],
        21 => vec!["TYPE".into(), key],
        22 | 23 => vec![
            "HSET".into(),
            key,
            field,
            val,
            rng.pick(FIELDS).into(),
            rng.pick(VALUES).into(),
        ],
        24 => vec!["HGET".into(), key, field],
        25 => vec!["HMGET".into(), key, field, rng.pick(FIELDS).into()],
        26 => vec!["HDEL".into(), key, field],
        27 => vec!["HGETALL".into(), key],
        28 => vec!["HINCRBY".into(), key, field, num],
        _ => vec![rng.pick(&["HEXISTS", "HLEN"]).into(), key, field],
    };
    // HLEN takes no field.
    if parts[0] == "HLEN" {
        parts[..2].to_vec()
    } else {
        parts
    }
}

/// The commands added for issue 15's list, as `command` picks them.
fn newer_command(
    rng: &mut Rng,
    pick: usize,
    key: String,
    val: String,
    field: String,
    num: String,
) -> Vec<String> {
    let other = rng.pick(KEYS).to_string();
    let offset = ["0", "3", "-1", "10", "x"][rng.below(5)].to_string();
    let end = ["-1", "2", "-3", "100", "0"][rng.below(5)].to_string();
    match pick {
        30 => vec![
            "SETEX".into(),
            key,
            ["1000", "0", "-5", "x"][rng.below(4)].into(),
            val,
        ],
        31 => vec!["PSETEX".into(), key, "5000000".into(), val],
        32 => {
            let mut c = vec!["GETEX".into(), key];
            match rng.below(5) {
                0 => c.extend(["EX".into(), "1000".into()]),
                1 => c.extend(["PX".into(), "5000000".into()]),
                2 => c.push("PERSIST".into()),
                3 => c.extend(["EXAT".into(), ["4000000000", "1"][rng.below(2)].into()]),
                _ => {}
            }
            c
        }
        33 => vec!["GETSET".into(), key, val],
        34 => vec!["SETRANGE".into(), key, offset, val],
        35 => vec!["GETRANGE".into(), key, offset, end],
        36 => vec!["MSETNX".into(), key, val, other, rng.pick(VALUES).into()],
        37 => vec![
            rng.pick(&["EXPIREAT", "PEXPIREAT"]).into(),
            key,
            ["4000000000", "1", "x"][rng.below(3)].into(),
        ],
        38 => vec![rng.pick(&["EXPIRETIME", "PEXPIRETIME"]).into(), key],
        39 => vec!["TOUCH".into(), key, other],
        40 => vec![rng.pick(&["RENAME", "RENAMENX"]).into(), key, other],
        41 => {
            let mut c = vec!["COPY".into(), key, other];
            if rng.below(2) == 0 {
                c.push("REPLACE".into());
            }
            c
        }
        42 => vec!["HSETNX".into(), key, field, val],
        43 => vec![rng.pick(&["HKEYS", "HVALS"]).into(), key],
        44 => vec!["HSTRLEN".into(), key, field],
        _ => vec![
            "HMSET".into(),
            key,
            field,
            val,
            rng.pick(FIELDS).into(),
            num,
        ],
    }
}

/// Set commands, as `command` picks them. Random picks (SPOP, SRANDMEMBER) take
/// every member, so both servers agree on which.
fn set_command(rng: &mut Rng, pick: usize, key: String) -> Vec<String> {
    const MEMBERS: &[&str] = &["m1", "m2", "m3", "10", "-2"];
    let other = rng.pick(KEYS).to_string();
    let member = rng.pick(MEMBERS).to_string();
    match pick {
        46..=49 => {
            let mut c = vec!["SADD".into(), key, member];
            c.extend((0..rng.below(3)).map(|_| rng.pick(MEMBERS).to_string()));
            c
        }
        50 => vec!["SREM".into(), key, member, rng.pick(MEMBERS).into()],
        51 => vec![rng.pick(&["SMEMBERS", "SCARD"]).into(), key],
        52 => vec!["SISMEMBER".into(), key, member],
        53 => vec!["SMISMEMBER".into(), key, member, rng.pick(MEMBERS).into()],
        54 => vec![rng.pick(&["SINTER", "SUNION", "SDIFF"]).into(), key, other],
        55 => vec![
            rng.pick(&["SINTERSTORE", "SUNIONSTORE", "SDIFFSTORE"])
                .into(),
            key,
            other,
            rng.pick(KEYS).into(),
        ],
        56 => vec!["SMOVE".into(), key, other, member],
        57 => vec!["SPOP".into(), key, "100".into()],
        58 => vec!["SRANDMEMBER".into(), key, "100".into()],
        _ => vec!["SPOP".into(), key, ["0", "-1"][rng.below(2)].into()],
    }
}

/// List commands, as `command` picks them.
fn list_command(rng: &mut Rng, pick: usize, key: String) -> Vec<String> {
    const ITEMS: &[&str] = &["a", "b", "c", "1"];
    let other = rng.pick(KEYS).to_string();
    let item = rng.pick(ITEMS).to_string();
    let index = ["0", "1", "-1", "-2", "5", "x"][rng.below(6)].to_string();
    let stop = ["-1", "0", "2", "-3", "10"][rng.below(5)].to_string();
    let ends = [
        ["LEFT", "RIGHT"][rng.below(2)].to_string(),
        ["LEFT", "RIGHT"][rng.below(2)].to_string(),
    ];
    match pick {
        60..=62 => {
            let mut c = vec![rng.pick(&["LPUSH", "RPUSH"]).into(), key, item];
            c.extend((0..rng.below(3)).map(|_| rng.pick(ITEMS).to_string()));
            c
        }
        63 => vec![rng.pick(&["LPUSHX", "RPUSHX"]).into(), key, item],
        64 => {
            let mut c = vec![rng.pick(&["LPOP", "RPOP"]).into(), key];
            if rng.below(2) == 0 {
                c.push(["0", "2", "10", "-1"][rng.below(4)].into());
            }
            c
        }
        65 | 66 => vec!["LRANGE".into(), key, index, stop],
        67 => vec!["LLEN".into(), key],
        68 => vec!["LINDEX".into(), key, index],
        69 => vec!["LSET".into(), key, index, item],
        70 => vec![
            "LREM".into(),
            key,
            ["0", "1", "-1", "2"][rng.below(4)].into(),
            item,
        ],
        71 => vec!["LTRIM".into(), key, index, stop],
        72 => vec![
            "LINSERT".into(),
            key,
            ["BEFORE", "AFTER", "MIDDLE"][rng.below(3)].into(),
            item,
            rng.pick(ITEMS).into(),
        ],
        73 => {
            let mut c = vec!["LPOS".into(), key, item];
            match rng.below(5) {
                0 => c.extend(["RANK".into(), ["1", "-1", "2", "0"][rng.below(4)].into()]),
                1 => c.extend(["COUNT".into(), ["0", "1", "2", "-1"][rng.below(4)].into()]),
                2 => c.extend(["MAXLEN".into(), ["0", "2", "-1"][rng.below(3)].into()]),
                3 => c.extend(["RANK".into(), "-1".into(), "COUNT".into(), "0".into()]),
                _ => {}
            }
            c
        }
        74 => {
            let [from, to] = ends;
            vec!["LMOVE".into(), key, other, from, to]
        }
        _ => vec!["RPOPLPUSH".into(), key, other],
    }
}

/// Sorted set commands (and the float increments), as `command` picks them.
fn zset_command(rng: &mut Rng, pick: usize, key: String) -> Vec<String> {
    const MEMBERS: &[&str] = &["a", "b", "c", "dd", "1"];
    const SCORES: &[&str] = &[
        "1", "2", "-1.5", "0.1", "1e300", "+inf", "-inf", "3.0e0", "x", "nan", "(1",
    ];
    const BOUNDS: &[&str] = &[
        "-inf", "+inf", "1", "(1", "2", "(2", "-1.5", "0.1", "x", "(x",
    ];
    const LEX: &[&str] = &["-", "+", "[a", "(a", "[c", "(dd", "a", "[1"];
    let other = rng.pick(KEYS).to_string();
    let member = rng.pick(MEMBERS).to_string();
    let score = rng.pick(SCORES).to_string();
    let index = ["0", "1", "-1", "-2", "5", "x"][rng.below(6)].to_string();
    let stop = ["-1", "0", "2", "-3", "10"][rng.below(5)].to_string();
    let (lo, hi) = (rng.pick(BOUNDS).to_string(), rng.pick(BOUNDS).to_string());
    let (lex_lo, lex_hi) = (rng.pick(LEX).to_string(), rng.pick(LEX).to_string());
    let options = |rng: &mut Rng, c: &mut Vec<String>| {
        for opt in ["REV", "WITHSCORES", "BYSCORE", "BYLEX"] {
            if rng.below(4) == 0 {
                c.push(opt.into());
            }
        }
        if rng.below(4) == 0 {
            c.extend([
                "LIMIT".into(),
                ["0", "1", "-1"][rng.below(3)].into(),
                ["1", "2", "-1", "0"][rng.below(4)].into(),
            ]);
        }
    };
    match pick {
        76..=80 => {
            let mut c = vec!["ZADD".into(), key];
            for opt in ["NX", "XX", "GT", "LT", "CH"] {
                if rng.below(8) == 0 {
                    c.push(opt.into());
                }
            }
            if rng.below(10) == 0 {
                c.push("INCR".into());
            }
            c.extend([score, member]);
            if rng.below(2) == 0 {
                c.extend([rng.pick(SCORES).into(), rng.pick(MEMBERS).into()]);
            }
            c
        }
        81 => vec!["ZINCRBY".into(), key, score, member],
        82 => vec!["ZREM".into(), key, member, rng.pick(MEMBERS).into()],
        83 => vec!["ZSCORE".into(), key, member],
        84 => vec!["ZMSCORE".into(), key, member, rng.pick(MEMBERS).into()],
        85 => vec![
            rng.pick(&["ZCARD", "ZRANK", "ZREVRANK"]).into(),
            key,
            member,
        ],
        86 => vec!["ZCOUNT".into(), key, lo, hi],
        87 | 88 => {
            let mut c = vec!["ZRANGE".into(), key];
            if rng.below(2) == 0 {
                c.extend([index, stop]);
            } else if rng.below(2) == 0 {
                c.extend([lo, hi]);
            } else {
                c.extend([lex_lo, lex_hi]);
            }
            options(rng, &mut c);
            c
        }
        89 => {
            let mut c = vec![
                rng.pick(&["ZRANGEBYSCORE", "ZREVRANGEBYSCORE"]).into(),
                key,
                lo,
                hi,
            ];
            options(rng, &mut c);
            c
        }
        90 => vec!["ZREVRANGE".into(), key, index, stop, "WITHSCORES".into()],
        91 => {
            let mut c = vec![rng.pick(&["ZPOPMIN", "ZPOPMAX"]).into(), key];
            if rng.below(2) == 0 {
                c.push(["0", "1", "2", "-1", "x"][rng.below(5)].into());
            }
            c
        }
        92 => vec!["ZREMRANGEBYRANK".into(), key, index, stop],
        93 => vec!["ZREMRANGEBYSCORE".into(), key, lo, hi],
        94 => {
            let mut c = vec!["ZRANGESTORE".into(), key, other, index, stop];
            if rng.below(2) == 0 {
                c.push("REV".into());
            }
            c
        }
        95 => vec![
            rng.pick(&["ZLEXCOUNT", "ZREMRANGEBYLEX"]).into(),
            key,
            lex_lo,
            lex_hi,
        ],
        96 | 97 => vec![
            "INCRBYFLOAT".into(),
            key,
            ["1", "0.1", "-2.5", "1e3", "x", "1000.6", "inf", "5.0e3"][rng.below(8)].into(),
        ],
        _ => vec![
            "HINCRBYFLOAT".into(),
            key,
            rng.pick(FIELDS).into(),
            ["1", "0.1", "-2.5", "x", "inf", "10.5"][rng.below(6)].into(),
        ],
    }
}

/// Scans, random picks that take everything, and OBJECT, as `command` picks them.
fn keyspace_command(rng: &mut Rng, pick: usize, key: String) -> Vec<String> {
    let pattern = ["*", "f*", "m?", "[ab]*", "a"][rng.below(5)].to_string();
    match pick {
        100 => vec!["OBJECT".into(), "ENCODING".into(), key],
        101 => {
            let mut c = vec![rng.pick(&["HSCAN", "SSCAN", "ZSCAN"]).into(), key];
            c.push(["0", "x"][usize::from(rng.below(10) == 0)].into());
            if rng.below(2) == 0 {
                c.extend(["MATCH".into(), pattern]);
            }
            if rng.below(3) == 0 {
                c.extend(["COUNT".into(), ["100", "0", "x"][rng.below(3)].into()]);
            }
            c
        }
        102 => {
            let mut c = vec![
                "HRANDFIELD".into(),
                key,
                ["100", "0", "x"][rng.below(3)].into(),
            ];
            if rng.below(2) == 0 {
                c.push(["WITHVALUES", "WITHSCORES"][rng.below(2)].into());
            }
            c
        }
        103 => {
            let mut c = vec![
                "ZRANDMEMBER".into(),
                key,
                ["100", "0", "x"][rng.below(3)].into(),
            ];
            if rng.below(2) == 0 {
                c.push(["WITHSCORES", "WITHVALUES"][rng.below(2)].into());
            }
            c
        }
        104 => vec![rng.pick(&["TYPE", "EXISTS"]).into(), key],
        _ => vec!["RENAME".into(), key, rng.pick(KEYS).into()],
    }
}

/// A step of a random sequence: one command on the main connection, or a write
/// of another connection (between a WATCH and its EXEC, to abort it).
enum Step {
    Main(Vec<String>),
    Other(Vec<String>),
}

/// One command, or now and then a transaction: an optional WATCH (sometimes
/// touched by another connection before it runs), MULTI, up to four commands
/// (sometimes one Redis refuses while queuing, so EXEC aborts), then EXEC or
/// DISCARD. Commands whose reply depends on the moment (TTL) stay out of
/// transactions, whose replies are compared whole.
fn steps(rng: &mut Rng) -> Vec<Step> {
    if rng.below(12) != 0 {
        return vec![Step::Main(command(rng))];
    }
    let mut steps = Vec::new();
    if rng.below(2) == 0 {
        let key = rng.pick(KEYS).to_string();
        steps.push(Step::Main(vec!["WATCH".into(), key.clone()]));
        if rng.below(2) == 0 {
            steps.push(Step::Other(vec!["SET".into(), key, "touched".into()]));
        }
    }
    steps.push(Step::Main(vec!["MULTI".into()]));
    for _ in 0..rng.below(5) {
        let cmd = loop {
            let cmd = command(rng);
            // Replies compared after normalising stay out: a transaction's
            // reply is compared whole.
            if !matches!(
                cmd[0].as_str(),
                "TTL"
                    | "PTTL"
                    | "EXPIRETIME"
                    | "PEXPIRETIME"
                    | "SMEMBERS"
                    | "SINTER"
                    | "SUNION"
                    | "SDIFF"
                    | "SPOP"
                    | "SRANDMEMBER"
                    | "SSCAN"
                    | "OBJECT"
            ) {
                break cmd;
            }
        };
        steps.push(Step::Main(cmd));
        if rng.below(20) == 0 {
            steps.push(Step::Main(vec!["GET".into()]));
        }
    }
    let end = ["EXEC", "EXEC", "EXEC", "DISCARD"][rng.below(4)];
    steps.push(Step::Main(vec![end.into()]));
    steps
}

/// Replies that depend on the moment (remaining TTLs) are compared by meaning, not
/// bytes. HGETALL is compared as it is: fields in the order they were first set, as
/// Redis gives them for small hashes.
fn normalise(cmd: &[String], reply: Resp) -> Resp {
    match (cmd[0].as_str(), reply) {
        ("TTL" | "PTTL", Resp::Int(n)) if n > 0 => Resp::Simple("positive".into()),
        // Sets have no order.
        (
            "SMEMBERS" | "SINTER" | "SUNION" | "SDIFF" | "SPOP" | "SRANDMEMBER",
            Resp::Array(mut members),
        ) => {
            members.sort_by_key(|m| format!("{m:?}"));
            Resp::Array(members)
        }
        // A string's encoding depends on how it was written (APPEND leaves `raw`
        // what SET would make `embstr` or `int`); the other types' do not.
        ("OBJECT", Resp::Bulk(e)) if [&b"int"[..], b"embstr", b"raw"].contains(&e.as_slice()) => {
            Resp::Simple("a string encoding".into())
        }
        ("SSCAN", Resp::Array(mut parts)) if parts.len() == 2 => {
            if let Resp::Array(members) = &mut parts[1] {
                members.sort_by_key(|m| format!("{m:?}"));
            }
            Resp::Array(parts)
        }
        // An expiry set relative to now differs by the milliseconds between the
        // two servers' clocks.
        ("EXPIRETIME" | "PEXPIRETIME", Resp::Int(n))
            if n > 0 && n != 4_000_000_000 && n != 4_000_000_000_000 =>
        {
            Resp::Simple("positive".into())
        }
        (_, other) => other,
    }
}

/// Which backend the proxy under test runs on.
#[derive(Clone, Copy, Debug)]
enum Behind {
    Embedded,
    Redis,
}

/// A proxy on a backend, with everything it needs kept alive.
struct Setup {
    _dir: tempfile::TempDir,
    _backend: Option<Process>,
    _proxy: Process,
    addr: SocketAddr,
    backend_addr: Option<SocketAddr>,
}

fn proxy_on(behind: Behind) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (backend, backend_addr, (topology, addr)) = match behind {
        Behind::Embedded => (None, None, single_dc_topology(dir.path(), "never")),
        Behind::Redis => {
            let (process, redis) = start_redis();
            (
                Some(process),
                Some(redis),
                redis_dc_topology(dir.path(), "never", redis),
            )
        }
    };
    let proxy = start_meridian(&topology, addr);
    Setup {
        _dir: dir,
        _backend: backend,
        _proxy: proxy,
        addr,
        backend_addr,
    }
}

#[test]
fn random_command_sequences_match_a_real_redis_on_the_embedded_store() {
    random_sequences(Behind::Embedded);
}

#[test]
fn random_command_sequences_match_a_real_redis_on_the_redis_backend() {
    random_sequences(Behind::Redis);
}

fn random_sequences(behind: Behind) {
    let (_redis, redis_addr) = start_redis();
    let setup = proxy_on(behind);
    let addr = setup.addr;
    let mut redis = Client::connect(redis_addr).unwrap();
    let mut proxy = Client::connect(addr).unwrap();
    let mut redis_other = Client::connect(redis_addr).unwrap();
    let mut proxy_other = Client::connect(addr).unwrap();
    // More seeds for a longer search: MERIDIAN_MODEL_SEEDS=200.
    let seeds = std::env::var("MERIDIAN_MODEL_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4u64);
    for seed in 1..=seeds {
        for c in [&mut redis, &mut proxy] {
            c.cmd(&[b"DEL", b"{u}:a", b"{u}:b", b"{u}:c", b"{u}:h", b"{u}:g"]);
        }
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut history = Vec::new();
        for step in (0..1_500).flat_map(|_| steps(&mut rng)) {
            let (cmd, redis, proxy) = match step {
                Step::Main(cmd) => (cmd, &mut redis, &mut proxy),
                Step::Other(cmd) => (cmd, &mut redis_other, &mut proxy_other),
            };
            let args: Vec<&[u8]> = cmd.iter().map(|s| s.as_bytes()).collect();
            let want = normalise(&cmd, redis.cmd(&args));
            let got = normalise(&cmd, proxy.cmd(&args));
            history.push(cmd.join(" "));
            if want != got {
                let tail = history
                    .iter()
                    .rev()
                    .take(12)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  ");
                panic!(
                    "{behind:?}, seed {seed}: replies differ\nredis:    {want:?}\nmeridian: {got:?}\nlast commands:\n  {tail}"
                );
            }
        }
    }
    // Both saw the same commands, so both hold the same keys (meridian's own
    // metadata key in a Redis backend is not counted).
    assert_eq!(
        proxy.cmd(&[b"DBSIZE"]),
        redis.cmd(&[b"DBSIZE"]),
        "{behind:?}"
    );
    if let Some(backend) = setup.backend_addr {
        // The data sits in the backend Redis in native types, readable by any tool.
        let mut direct = Client::connect(backend).unwrap();
        let through = proxy.cmd(&[b"GET", b"{u}:a"]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let native = direct.cmd(&[b"GET", b"{u}:a"]);
            let both_errors = matches!(native, Resp::Error(_)) && matches!(through, Resp::Error(_));
            if native == through || both_errors {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "backend never caught up: {native:?} vs {through:?}"
            );
            std::thread::yield_now();
        }
    }
}

#[test]
fn errors_and_protocol_edges_match_redis() {
    let (_redis, redis_addr) = start_redis();
    let dir = tempfile::tempdir().unwrap();
    let (topology, addr) = single_dc_topology(dir.path(), "never");
    let _proxy = start_meridian(&topology, addr);
    let mut redis = Client::connect(redis_addr).unwrap();
    let mut proxy = Client::connect(addr).unwrap();
    let cases: &[&[&[u8]]] = &[
        &[b"GET"],
        &[b"NOSUCH", b"a", b"b"],
        &[b"SET", b"k", b"v", b"EX", b"0"],
        &[b"SET", b"k", b"v", b"PX", b"abc"],
        &[b"SET", b"k", b"v", b"BOGUS"],
        &[b"SELECT", b"0"],
        &[b"PING"],
        &[b"PING", b"hi"],
        &[b"ECHO", b"x"],
        &[b"CLIENT", b"SETNAME", b"a b"],
        &[b"CLIENT", b"SETNAME", b"tester"],
        &[b"CLIENT", b"GETNAME"],
        &[b"HSET", b"h", b"f"],
        &[b"MSET", b"a", b"1", b"b"],
        &[b"EXPIRE", b"k", b"10", b"NX", b"XX"],
    ];
    for case in cases {
        assert_eq!(
            proxy.cmd(case),
            redis.cmd(case),
            "{:?}",
            case.iter()
                .map(|a| String::from_utf8_lossy(a))
                .collect::<Vec<_>>()
        );
    }
    // Like Redis Cluster, meridian has database 0 only.
    assert_eq!(
        proxy.cmd(&[b"SELECT", b"1"]),
        Resp::Error("ERR DB index is out of range".into())
    );
    // Inline commands, as typed in telnet.
    redis.raw(b"SET inline \"a b\"\r\nGET inline\r\n");
    proxy.raw(b"SET inline \"a b\"\r\nGET inline\r\n");
    for _ in 0..2 {
        assert_eq!(proxy.read().unwrap(), redis.read().unwrap());
    }
}

/// The edges of transactions, command by command as Redis answers them: EXEC
/// and DISCARD without MULTI, nested MULTI, WATCH inside MULTI, queued commands
/// Redis refuses (EXECABORT), errors while running (the others still run), an
/// empty transaction, and WATCH with and without a write in between.
#[test]
fn transaction_edges_match_redis() {
    let (_redis, redis_addr) = start_redis();
    let dir = tempfile::tempdir().unwrap();
    let (topology, addr) = single_dc_topology(dir.path(), "never");
    let _proxy = start_meridian(&topology, addr);
    let mut redis = Client::connect(redis_addr).unwrap();
    let mut proxy = Client::connect(addr).unwrap();
    let mut redis_other = Client::connect(redis_addr).unwrap();
    let mut proxy_other = Client::connect(addr).unwrap();
    // `!` runs the command on the other connection.
    let script: &[&[&str]] = &[
        &["EXEC"],
        &["DISCARD"],
        &["MULTI"],
        &["MULTI"],
        &["WATCH", "{t}:a"],
        &["SET", "{t}:a", "1"],
        &["INCR", "{t}:a"],
        &["GET", "{t}:a"],
        &["EXEC"],
        &["MULTI"],
        &["SET", "{t}:s", "x"],
        &["INCR", "{t}:s"],
        &["HSET", "{t}:s", "f", "v"],
        &["APPEND", "{t}:s", "y"],
        &["EXEC"],
        &["GET", "{t}:s"],
        &["MULTI"],
        &["SET", "{t}:b", "1"],
        &["GET"],
        &["EXEC"],
        &["EXISTS", "{t}:b"],
        &["MULTI"],
        &["NOSUCH", "x"],
        &["SET", "{t}:b", "2"],
        &["EXEC"],
        &["MULTI"],
        &["EXEC"],
        &["MULTI"],
        &["SET", "{t}:c", "1"],
        &["DISCARD"],
        &["EXISTS", "{t}:c"],
        &["WATCH", "{t}:w"],
        &["MULTI"],
        &["SET", "{t}:w", "mine"],
        &["EXEC"],
        &["WATCH", "{t}:w"],
        &["!", "SET", "{t}:w", "theirs"],
        &["MULTI"],
        &["SET", "{t}:w", "mine again"],
        &["EXEC"],
        &["GET", "{t}:w"],
        &["WATCH", "{t}:w"],
        &["!", "SET", "{t}:w", "theirs"],
        &["MULTI"],
        &["GET", "{t}:w"],
        &["EXEC"],
        &["WATCH", "{t}:w"],
        &["!", "SET", "{t}:w", "again"],
        &["UNWATCH"],
        &["MULTI"],
        &["GET", "{t}:w"],
        &["EXEC"],
        &["WATCH", "{t}:none"],
        &["MULTI"],
        &["EXEC"],
        &["WATCH", "{t}:gone"],
        &["!", "SET", "{t}:gone", "1"],
        &["!", "DEL", "{t}:gone"],
        &["MULTI"],
        &["EXEC"],
    ];
    for line in script {
        let (args, redis, proxy) = match line {
            ["!", rest @ ..] => (rest, &mut redis_other, &mut proxy_other),
            _ => (*line, &mut redis, &mut proxy),
        };
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        assert_eq!(proxy.cmd(&args), redis.cmd(&args), "{line:?}");
    }
}

/// DBSIZE on a Redis backend counts the writes acknowledged before it, even those
/// the committer has not yet written to Redis.
#[test]
fn dbsize_counts_writes_not_yet_committed_to_redis() {
    let setup = proxy_on(Behind::Redis);
    let mut proxy = Client::connect(setup.addr).unwrap();
    let keys: Vec<String> = (0..2_000).map(|i| format!("{{u}}:n{i}")).collect();
    for round in 0..5 {
        for key in &keys {
            proxy.send(&[b"SET", key.as_bytes(), b"v"]);
        }
        proxy.send(&[b"DBSIZE"]);
        for _ in &keys {
            assert_eq!(proxy.read().unwrap(), Resp::Simple("OK".into()));
        }
        assert_eq!(
            proxy.read().unwrap(),
            Resp::Int(keys.len() as i64),
            "round {round}"
        );
        for key in &keys {
            proxy.send(&[b"DEL", key.as_bytes()]);
        }
        proxy.send(&[b"DBSIZE"]);
        for _ in &keys {
            assert_eq!(proxy.read().unwrap(), Resp::Int(1));
        }
        assert_eq!(proxy.read().unwrap(), Resp::Int(0), "round {round}");
    }
}

/// Every key a full SCAN with `options` returns, sorted, and whether any came twice.
fn full_scan(client: &mut Client, options: &[&str]) -> (Vec<Vec<u8>>, bool) {
    let mut cursor = b"0".to_vec();
    let mut keys = Vec::new();
    loop {
        let mut args: Vec<&[u8]> = vec![b"SCAN", &cursor];
        args.extend(options.iter().map(|o| o.as_bytes()));
        let Resp::Array(parts) = client.cmd(&args) else {
            panic!("SCAN {options:?} did not answer an array");
        };
        let (Resp::Bulk(next), Resp::Array(page)) = (&parts[0], &parts[1]) else {
            panic!("SCAN {options:?}: {parts:?}");
        };
        keys.extend(page.iter().map(|k| match k {
            Resp::Bulk(k) => k.clone(),
            other => panic!("SCAN key {other:?}"),
        }));
        if next.as_slice() == b"0" {
            break;
        }
        cursor = next.clone();
    }
    let n = keys.len();
    keys.sort();
    keys.dedup();
    let repeated = keys.len() != n;
    (keys, repeated)
}

/// SCAN, KEYS, RANDOMKEY and FLUSHDB against a real Redis, on both backends:
/// full scans find every key once (over many pages), with MATCH and TYPE; KEYS
/// matches; RANDOMKEY names a key there is; FLUSHDB empties the database; and
/// argument errors read as Redis's.
#[test]
fn keyspace_commands_match_redis() {
    for behind in [Behind::Embedded, Behind::Redis] {
        let (_redis, redis_addr) = start_redis();
        let setup = proxy_on(behind);
        let mut redis = Client::connect(redis_addr).unwrap();
        let mut proxy = Client::connect(setup.addr).unwrap();
        for c in [&mut redis, &mut proxy] {
            assert_eq!(c.cmd(&[b"FLUSHDB"]), Resp::Simple("OK".into()));
            for i in 0..120 {
                let key = format!("{{u{}}}:k{i}", i % 7);
                let _ = match i % 4 {
                    0 => c.cmd(&[b"SET", key.as_bytes(), b"v"]),
                    1 => c.cmd(&[b"HSET", key.as_bytes(), b"f", b"v"]),
                    2 => c.cmd(&[b"ZADD", key.as_bytes(), b"1", b"m"]),
                    _ => c.cmd(&[b"SET", key.as_bytes(), b"v", b"PX", b"1"]),
                };
            }
        }
        // The PX 1 keys expire: neither lists them. The last written is the
        // last to expire.
        for c in [&mut redis, &mut proxy] {
            support::eventually("the PX 1 keys to expire", || {
                c.cmd(&[b"EXISTS", b"{u0}:k119"]) == Resp::Int(0)
            });
        }
        for options in [
            &[][..],
            &["COUNT", "7"],
            &["MATCH", "{u3}*"],
            &["MATCH", "*k1?", "COUNT", "5"],
            &["TYPE", "hash"],
            &["TYPE", "zset", "COUNT", "1000"],
        ] {
            let (want, _) = full_scan(&mut redis, options);
            let (got, repeated) = full_scan(&mut proxy, options);
            assert_eq!(got, want, "{behind:?} SCAN {options:?}");
            assert!(
                !repeated,
                "{behind:?} SCAN {options:?} returned a key twice"
            );
        }
        for pattern in ["*", "{u1}:*", "*k[1-3]", "nothing*"] {
            let sorted = |r: Resp| match r {
                Resp::Array(mut keys) => {
                    keys.sort_by_key(|k| format!("{k:?}"));
                    keys
                }
                other => panic!("KEYS {other:?}"),
            };
            let args: &[&[u8]] = &[b"KEYS", pattern.as_bytes()];
            assert_eq!(
                sorted(proxy.cmd(args)),
                sorted(redis.cmd(args)),
                "{behind:?} KEYS {pattern}"
            );
        }
        let Resp::Bulk(key) = proxy.cmd(&[b"RANDOMKEY"]) else {
            panic!("RANDOMKEY");
        };
        assert_eq!(proxy.cmd(&[b"EXISTS", &key]), Resp::Int(1));
        for case in [
            &[&b"SCAN"[..], b"x"][..],
            &[b"SCAN", b"0", b"COUNT", b"0"],
            &[b"SCAN", b"0", b"COUNT", b"x"],
            &[b"SCAN", b"0", b"TYPE"],
            &[b"SCAN", b"0", b"BOGUS", b"1"],
            &[b"HSCAN", b"{u1}:k1", b"0", b"COUNT", b"0"],
            &[b"HSCAN", b"{u0}:k0", b"0"],
            &[b"FLUSHDB", b"NOW"],
            &[b"FLUSHALL", b"ASYNC"],
            &[b"DBSIZE"],
            &[b"RANDOMKEY"],
            &[b"SCAN", b"0"],
            &[b"KEYS", b"*"],
        ] {
            assert_eq!(proxy.cmd(case), redis.cmd(case), "{behind:?} {case:?}");
        }
    }
}
