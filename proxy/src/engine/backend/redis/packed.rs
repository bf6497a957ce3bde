//! A commit's commands, encoded straight into one kept buffer.
//!
//! A commit of thousands of keys built as `redis::Cmd`s copies every argument
//! twice (into the command, then into the packed request) and allocates per
//! argument; encoding the request in place copies each byte once, into a buffer
//! the committer keeps from commit to commit.

/// Commands in the RESP request encoding, counted.
#[derive(Debug, Default)]
pub(super) struct Packed {
    buf: Vec<u8>,
    commands: usize,
    /// Arguments the command being written still owes: a command whose count
    /// is wrong would leave Redis waiting for the rest of the request.
    owed: usize,
}

/// Past this, the buffer is let go after a commit rather than kept.
const KEEP: usize = 64 << 20;

impl Packed {
    /// Empties it for the next request, keeping its memory unless a huge commit
    /// grew it.
    pub(super) fn clear(&mut self) {
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        }
        self.buf.clear();
        self.commands = 0;
        self.owed = 0;
    }

    /// Starts a command of `args` arguments (its name included); exactly that
    /// many [`Packed::arg`] calls must follow.
    pub(super) fn command(&mut self, args: usize) -> &mut Self {
        debug_assert_eq!(self.owed, 0, "the previous command is missing arguments");
        self.owed = args;
        self.commands += 1;
        self.header(b'*', args);
        self
    }

    /// One argument.
    pub(super) fn arg(&mut self, arg: &[u8]) -> &mut Self {
        debug_assert!(self.owed > 0, "more arguments than the command declared");
        self.owed = self.owed.saturating_sub(1);
        self.header(b'$', arg.len());
        self.buf.extend_from_slice(arg);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// A number as an argument, in decimal.
    pub(super) fn arg_number(&mut self, n: impl itoa::Integer) -> &mut Self {
        let mut digits = itoa::Buffer::new();
        self.arg(digits.format(n).as_bytes())
    }

    /// A whole command.
    pub(super) fn push(&mut self, args: &[&[u8]]) {
        self.command(args.len());
        for arg in args {
            self.arg(arg);
        }
    }

    /// Commands so far.
    pub(super) fn commands(&self) -> usize {
        self.commands
    }

    /// The request's bytes.
    pub(super) fn bytes(&self) -> &[u8] {
        debug_assert_eq!(self.owed, 0, "the last command is missing arguments");
        &self.buf
    }

    fn header(&mut self, kind: u8, n: usize) {
        self.buf.push(kind);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_redis_reads_them() {
        let mut packed = Packed::default();
        packed.push(&[b"SET", b"k", b""]);
        packed
            .command(3)
            .arg(b"PEXPIREAT")
            .arg(b"k")
            .arg_number(17u64);
        assert_eq!(packed.commands(), 2);
        assert_eq!(
            packed.bytes(),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n*3\r\n$9\r\nPEXPIREAT\r\n$1\r\nk\r\n$2\r\n17\r\n"
        );
        let expected = redis::pipe()
            .cmd("SET")
            .arg("k")
            .arg("")
            .cmd("PEXPIREAT")
            .arg("k")
            .arg(17)
            .get_packed_pipeline();
        assert_eq!(packed.bytes(), expected.as_slice());
        packed.clear();
        assert_eq!((packed.commands(), packed.bytes()), (0, &b""[..]));
    }

    #[test]
    #[should_panic(expected = "missing arguments")]
    fn a_command_short_of_its_arguments_is_caught() {
        let mut packed = Packed::default();
        packed.command(3).arg(b"SET").arg(b"k");
        packed.bytes();
    }
}
