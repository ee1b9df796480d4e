//! A client's numbered request on the wire: the `agentkeeper-client-id` (32 hex digits, random
//! per client) and `agentkeeper-request-seq` (a number above 0, one per request, the same on a
//! retry) metadata that make a Register or a CreateTask apply once however often it is sent.
//!
//! Architecture invariant: parsing only; what a number means is the core's (`core::sessions`).
//! Both headers or neither: a half or malformed pair is INVALID_ARGUMENT, never ignored (a
//! client that meant to be safe must not silently be unsafe).

use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::core::Command;
use crate::core::sessions::RequestId;

pub const CLIENT_ID: &str = "agentkeeper-client-id";
pub const REQUEST_SEQ: &str = "agentkeeper-request-seq";

/// `command`, numbered if the call's metadata numbers it.
pub fn numbered(metadata: &MetadataMap, command: Command) -> Result<Command, Status> {
    let text = |name: &str| -> Result<Option<&str>, Status> {
        (metadata.get(name))
            .map(|value| {
                value
                    .to_str()
                    .map_err(|_| Status::invalid_argument(format!("{name}: not text")))
            })
            .transpose()
    };
    let (client, seq) = match (text(CLIENT_ID)?, text(REQUEST_SEQ)?) {
        (None, None) => return Ok(command),
        (Some(client), Some(seq)) => (client, seq),
        _ => {
            return Err(Status::invalid_argument(format!(
                "{CLIENT_ID} and {REQUEST_SEQ} come together or not at all"
            )));
        }
    };
    let client = (client.len() == 32)
        .then(|| u128::from_str_radix(client, 16).ok())
        .flatten()
        .ok_or_else(|| Status::invalid_argument(format!("{CLIENT_ID}: 32 hex digits, not {client:?}")))?;
    let seq = (seq.parse::<u64>().ok())
        .filter(|seq| *seq > 0)
        .ok_or_else(|| Status::invalid_argument(format!("{REQUEST_SEQ}: a number above 0, not {seq:?}")))?;
    Ok(Command::Once {
        request: RequestId { client, seq },
        command: Box::new(command),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_numbered_call_becomes_a_once_command_and_a_half_or_bad_pair_is_refused() {
        let command = || Command::Heartbeat { agent_id: "a".into() };
        assert_eq!(numbered(&metadata(&[]), command()).unwrap(), command());
        let client = "0123456789abcdef0123456789ABCDEF";
        let once = numbered(&metadata(&[(CLIENT_ID, client), (REQUEST_SEQ, "7")]), command()).unwrap();
        assert_eq!(
            once,
            Command::Once {
                request: RequestId {
                    client: 0x0123456789abcdef0123456789abcdef,
                    seq: 7
                },
                command: Box::new(command()),
            }
        );
        let refused = |pairs: &[(&'static str, &str)]| numbered(&metadata(pairs), command()).unwrap_err();
        assert!(refused(&[(CLIENT_ID, client)]).message().contains("together"));
        assert!(
            refused(&[(CLIENT_ID, "abc"), (REQUEST_SEQ, "1")])
                .message()
                .contains("32 hex")
        );
        assert!(
            refused(&[(CLIENT_ID, client), (REQUEST_SEQ, "0")])
                .message()
                .contains("above 0")
        );
        assert!(
            refused(&[(CLIENT_ID, client), (REQUEST_SEQ, "x")])
                .message()
                .contains("above 0")
        );
    }
}
