//! `MERIDIAN HOME <user> [<dc>]`: where a user's home is and why; moving it by hand.

use bytes::Bytes;
use meridian_policies::WriteRoute;

use super::Conn;
use crate::resp::{Protocol, Reply};

impl Conn {
    /// `MERIDIAN HOME <user>` describes the user's home; `MERIDIAN HOME <user>
    /// <dc>` moves it there through the same handover as a move by the follow
    /// rule, run by the datacenter that writes the user now (forwarded there).
    pub(super) async fn home(&mut self, args: &[Bytes]) -> Reply {
        if !(3..=4).contains(&args.len()) {
            return Reply::error("ERR wrong number of arguments for 'meridian|home' command");
        }
        let Some(repl) = self.ctx.replication.clone() else {
            return match args.len() {
                3 => Reply::Array(vec![
                    Reply::bulk("user"),
                    Reply::Bulk(args[2].clone()),
                    Reply::bulk("home"),
                    Reply::bulk(self.ctx.config.dc.clone()),
                    Reply::bulk("why"),
                    Reply::bulk("the only datacenter"),
                ]),
                _ => Reply::error("ERR homes do not move in a cluster of one datacenter"),
            };
        };
        let user = args[2].clone();
        if args.len() == 3 {
            return repl.describe_home(&user);
        }
        let Some(to) = repl.index_of(&String::from_utf8_lossy(&args[3])) else {
            return Reply::error(format!(
                "ERR unknown datacenter '{}'; the datacenters are {}",
                String::from_utf8_lossy(&args[3]),
                repl.datacenter_ids().join(", ")
            ));
        };
        match repl.route_waiting(&user).await {
            WriteRoute::Here => match repl.move_user(&user, to, "operator").await {
                Ok(done) => Reply::bulk(done),
                Err(why) => Reply::error(why),
            },
            WriteRoute::Forward { home } => {
                let protocol = if self.protocol == Protocol::Resp3 {
                    3
                } else {
                    2
                };
                let mut token = self.token.clone();
                if let Some((from, seq)) = repl.placed_since(&user) {
                    token.advance(&from, seq);
                }
                let request = repl.request(home, protocol, &token, vec![args.to_vec()], None);
                match repl.forward(&request).await {
                    Ok(mut reply) if reply.replies.len() == 1 => {
                        Reply::Encoded(reply.replies.remove(0))
                    }
                    Ok(_) => Reply::error("ERR the home answered a move with several replies"),
                    Err(e) => Reply::error(e.to_string()),
                }
            }
            WriteRoute::Unavailable { home, why } => {
                Reply::error(repl.unavailable_message(&user, home, why))
            }
            WriteRoute::HomeUnreachable { home, for_ms } => Reply::error(format!(
                "TRYAGAIN {}, the home of user '{}', has been unreachable from {} for {for_ms} ms: it cannot move the user now",
                repl.dc_id(home),
                String::from_utf8_lossy(&user),
                repl.dc()
            )),
        }
    }
}
