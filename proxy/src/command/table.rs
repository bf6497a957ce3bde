//! The command table: every command meridian accepts, with its arity and key positions
//! in Redis's own terms (so clients that read `COMMAND` see what they expect).

use bytes::Bytes;

use super::{DataFn, hashes, keys, lists, scans, sets, strings, zsets};

/// What executing a command involves.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Reads data: served from this datacenter's store.
    Read(DataFn),
    /// Changes data: committed through the log as a change.
    Write(DataFn),
    /// About the connection or the server; no data.
    Server,
}

/// One command.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Upper-case name.
    pub name: &'static str,
    /// Redis arity: exactly n arguments (name included) when positive, at least -n when negative.
    pub arity: i32,
    /// What it does.
    pub kind: Kind,
    /// Position of the first key (0: no keys).
    pub first_key: usize,
    /// Position of the last key; negative counts from the end.
    pub last_key: i32,
    /// Distance between keys.
    pub step: usize,
}

impl Spec {
    /// Whether `argc` arguments (name included) fit the arity.
    /// Pair-taking commands (MSET, HSET) also need whole pairs.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let count_ok = if self.arity >= 0 {
            argc == self.arity as usize
        } else {
            argc >= self.arity.unsigned_abs() as usize
        };
        let pairs_ok = match self.name {
            "MSET" | "MSETNX" => argc % 2 == 1,
            "HSET" | "HMSET" => argc % 2 == 0,
            _ => true,
        };
        count_ok && pairs_ok
    }

    /// Whether executing the command reads its keys' current state. Only plain SET
    /// (no NX, XX, GET or KEEPTTL) and MSET write blind.
    pub fn reads_state(&self, args: &[Bytes]) -> bool {
        match self.name {
            "SET" => args[3..].iter().any(|a| {
                let word = a.to_ascii_uppercase();
                matches!(word.as_slice(), b"NX" | b"XX" | b"GET" | b"KEEPTTL")
            }),
            "MSET" | "SETEX" | "PSETEX" => false,
            _ => true,
        }
    }

    /// The keys among `args`.
    pub fn keys<'a>(&self, args: &'a [Bytes]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let last = if self.first_key == 0 {
            0
        } else if self.last_key < 0 {
            args.len()
                .saturating_sub(self.last_key.unsigned_abs() as usize)
        } else {
            (self.last_key as usize).min(args.len().saturating_sub(1))
        };
        let (first, step) = (self.first_key, self.step.max(1));
        (first..=last)
            .step_by(step)
            .filter(move |&i| first != 0 && i < args.len())
            .map(move |i| &args[i][..])
    }

    /// Whether the command changes data.
    pub fn is_write(&self) -> bool {
        matches!(self.kind, Kind::Write(_))
    }
}

const fn read(
    name: &'static str,
    arity: i32,
    f: DataFn,
    first: usize,
    last: i32,
    step: usize,
) -> Spec {
    Spec {
        name,
        arity,
        kind: Kind::Read(f),
        first_key: first,
        last_key: last,
        step,
    }
}

const fn write(
    name: &'static str,
    arity: i32,
    f: DataFn,
    first: usize,
    last: i32,
    step: usize,
) -> Spec {
    Spec {
        name,
        arity,
        kind: Kind::Write(f),
        first_key: first,
        last_key: last,
        step,
    }
}

const fn server(name: &'static str, arity: i32) -> Spec {
    Spec {
        name,
        arity,
        kind: Kind::Server,
        first_key: 0,
        last_key: 0,
        step: 0,
    }
}

/// A connection command that names keys (`WATCH`).
const fn server_keys(name: &'static str, arity: i32, first: usize, last: i32, step: usize) -> Spec {
    Spec {
        name,
        arity,
        kind: Kind::Server,
        first_key: first,
        last_key: last,
        step,
    }
}

/// Every command, in the order `COMMAND` lists them.
pub static COMMANDS: &[Spec] = &[
    server("PING", -1),
    server("ECHO", 2),
    server("HELLO", -1),
    server("AUTH", -2),
    server("CLIENT", -2),
    server("SELECT", 2),
    server("COMMAND", -1),
    server("QUIT", -1),
    server("INFO", -1),
    server("DBSIZE", 1),
    server("WAIT", 3),
    server("MERIDIAN", -2),
    server("MULTI", 1),
    server("EXEC", 1),
    server("DISCARD", 1),
    server_keys("WATCH", -2, 1, -1, 1),
    server("UNWATCH", 1),
    read("GET", 2, strings::get, 1, 1, 1),
    write("SET", -3, strings::set, 1, 1, 1),
    write("SETNX", 3, strings::setnx, 1, 1, 1),
    write("GETDEL", 2, strings::getdel, 1, 1, 1),
    read("MGET", -2, strings::mget, 1, -1, 1),
    write("MSET", -3, strings::mset, 1, -1, 2),
    write("APPEND", 3, strings::append, 1, 1, 1),
    read("STRLEN", 2, strings::strlen, 1, 1, 1),
    write("INCR", 2, strings::incr, 1, 1, 1),
    write("INCRBY", 3, strings::incrby, 1, 1, 1),
    write("DECR", 2, strings::decr, 1, 1, 1),
    write("DECRBY", 3, strings::decrby, 1, 1, 1),
    write("DEL", -2, keys::del, 1, -1, 1),
    write("UNLINK", -2, keys::del, 1, -1, 1),
    read("EXISTS", -2, keys::exists, 1, -1, 1),
    write("EXPIRE", -3, keys::expire, 1, 1, 1),
    write("PEXPIRE", -3, keys::pexpire, 1, 1, 1),
    read("TTL", 2, keys::ttl, 1, 1, 1),
    read("PTTL", 2, keys::pttl, 1, 1, 1),
    write("PERSIST", 2, keys::persist, 1, 1, 1),
    read("TYPE", 2, keys::type_of, 1, 1, 1),
    write("HSET", -4, hashes::hset, 1, 1, 1),
    read("HGET", 3, hashes::hget, 1, 1, 1),
    read("HMGET", -3, hashes::hmget, 1, 1, 1),
    write("HDEL", -3, hashes::hdel, 1, 1, 1),
    read("HGETALL", 2, hashes::hgetall, 1, 1, 1),
    write("HINCRBY", 4, hashes::hincrby, 1, 1, 1),
    read("HEXISTS", 3, hashes::hexists, 1, 1, 1),
    read("HLEN", 2, hashes::hlen, 1, 1, 1),
    write("SETEX", 4, strings::setex, 1, 1, 1),
    write("PSETEX", 4, strings::psetex, 1, 1, 1),
    write("GETEX", -2, strings::getex, 1, 1, 1),
    write("GETSET", 3, strings::getset, 1, 1, 1),
    write("SETRANGE", 4, strings::setrange, 1, 1, 1),
    read("GETRANGE", 4, strings::getrange, 1, 1, 1),
    write("MSETNX", -3, strings::msetnx, 1, -1, 2),
    write("EXPIREAT", -3, keys::expireat, 1, 1, 1),
    write("PEXPIREAT", -3, keys::pexpireat, 1, 1, 1),
    read("EXPIRETIME", 2, keys::expiretime, 1, 1, 1),
    read("PEXPIRETIME", 2, keys::pexpiretime, 1, 1, 1),
    read("TOUCH", -2, keys::exists, 1, -1, 1),
    write("RENAME", 3, keys::rename, 1, 2, 1),
    write("RENAMENX", 3, keys::renamenx, 1, 2, 1),
    write("COPY", -3, keys::copy, 1, 2, 1),
    write("HMSET", -4, hashes::hmset, 1, 1, 1),
    write("HSETNX", 4, hashes::hsetnx, 1, 1, 1),
    read("HKEYS", 2, hashes::hkeys, 1, 1, 1),
    read("HVALS", 2, hashes::hvals, 1, 1, 1),
    read("HSTRLEN", 3, hashes::hstrlen, 1, 1, 1),
    server("TIME", 1),
    server("SCAN", -2),
    server("KEYS", 2),
    server("RANDOMKEY", 1),
    server("FLUSHDB", -1),
    server("FLUSHALL", -1),
    write("SADD", -3, sets::sadd, 1, 1, 1),
    write("SREM", -3, sets::srem, 1, 1, 1),
    read("SMEMBERS", 2, sets::smembers, 1, 1, 1),
    read("SISMEMBER", 3, sets::sismember, 1, 1, 1),
    read("SMISMEMBER", -3, sets::smismember, 1, 1, 1),
    read("SCARD", 2, sets::scard, 1, 1, 1),
    write("SPOP", -2, sets::spop, 1, 1, 1),
    read("SRANDMEMBER", -2, sets::srandmember, 1, 1, 1),
    read("SINTER", -2, sets::sinter, 1, -1, 1),
    read("SUNION", -2, sets::sunion, 1, -1, 1),
    read("SDIFF", -2, sets::sdiff, 1, -1, 1),
    write("SINTERSTORE", -3, sets::sinterstore, 1, -1, 1),
    write("SUNIONSTORE", -3, sets::sunionstore, 1, -1, 1),
    write("SDIFFSTORE", -3, sets::sdiffstore, 1, -1, 1),
    write("SMOVE", 4, sets::smove, 1, 2, 1),
    write("INCRBYFLOAT", 3, strings::incrbyfloat, 1, 1, 1),
    write("HINCRBYFLOAT", 4, hashes::hincrbyfloat, 1, 1, 1),
    write("LPUSH", -3, lists::lpush, 1, 1, 1),
    write("RPUSH", -3, lists::rpush, 1, 1, 1),
    write("LPUSHX", -3, lists::lpushx, 1, 1, 1),
    write("RPUSHX", -3, lists::rpushx, 1, 1, 1),
    write("LPOP", -2, lists::lpop, 1, 1, 1),
    write("RPOP", -2, lists::rpop, 1, 1, 1),
    read("LRANGE", 4, lists::lrange, 1, 1, 1),
    read("LLEN", 2, lists::llen, 1, 1, 1),
    read("LINDEX", 3, lists::lindex, 1, 1, 1),
    write("LSET", 4, lists::lset, 1, 1, 1),
    write("LREM", 4, lists::lrem, 1, 1, 1),
    write("LTRIM", 4, lists::ltrim, 1, 1, 1),
    write("LINSERT", 5, lists::linsert, 1, 1, 1),
    read("LPOS", -3, lists::lpos, 1, 1, 1),
    write("LMOVE", 5, lists::lmove, 1, 2, 1),
    write("RPOPLPUSH", 3, lists::rpoplpush, 1, 2, 1),
    read("HSCAN", -3, scans::hscan, 1, 1, 1),
    read("SSCAN", -3, scans::sscan, 1, 1, 1),
    read("ZSCAN", -3, scans::zscan, 1, 1, 1),
    read("HRANDFIELD", -2, scans::hrandfield, 1, 1, 1),
    read("ZRANDMEMBER", -2, scans::zrandmember, 1, 1, 1),
    read("OBJECT", -2, keys::object, 2, 2, 1),
    write("ZADD", -4, zsets::zadd, 1, 1, 1),
    write("ZINCRBY", 4, zsets::zincrby, 1, 1, 1),
    write("ZREM", -3, zsets::zrem, 1, 1, 1),
    read("ZSCORE", 3, zsets::zscore, 1, 1, 1),
    read("ZMSCORE", -3, zsets::zmscore, 1, 1, 1),
    read("ZCARD", 2, zsets::zcard, 1, 1, 1),
    read("ZCOUNT", 4, zsets::zcount, 1, 1, 1),
    read("ZLEXCOUNT", 4, zsets::zlexcount, 1, 1, 1),
    read("ZRANGE", -4, zsets::zrange, 1, 1, 1),
    read("ZRANGEBYSCORE", -4, zsets::zrangebyscore, 1, 1, 1),
    read("ZREVRANGEBYSCORE", -4, zsets::zrevrangebyscore, 1, 1, 1),
    read("ZREVRANGE", -4, zsets::zrevrange, 1, 1, 1),
    read("ZRANGEBYLEX", -4, zsets::zrangebylex, 1, 1, 1),
    read("ZREVRANGEBYLEX", -4, zsets::zrevrangebylex, 1, 1, 1),
    write("ZRANGESTORE", -5, zsets::zrangestore, 1, 2, 1),
    read("ZRANK", 3, zsets::zrank, 1, 1, 1),
    read("ZREVRANK", 3, zsets::zrevrank, 1, 1, 1),
    write("ZPOPMIN", -2, zsets::zpopmin, 1, 1, 1),
    write("ZPOPMAX", -2, zsets::zpopmax, 1, 1, 1),
    write("ZREMRANGEBYRANK", 4, zsets::zremrangebyrank, 1, 1, 1),
    write("ZREMRANGEBYSCORE", 4, zsets::zremrangebyscore, 1, 1, 1),
    write("ZREMRANGEBYLEX", 4, zsets::zremrangebylex, 1, 1, 1),
];

/// The command named `name` (any case) and its position in [`COMMANDS`].
pub fn lookup_indexed(name: &[u8]) -> Option<(usize, &'static Spec)> {
    COMMANDS
        .iter()
        .enumerate()
        .find(|(_, spec)| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

/// The command named `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}
