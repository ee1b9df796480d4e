//! `agentkeeper.v1.ClusterService`: the cluster as the node asked sees it (leader, term,
//! members with their roles, applied indexes and when each was last heard from), for
//! `agentkeeper ctl cluster status`, the dashboard's cluster panel and clients choosing a node.
//!
//! Architecture invariant: reads only; what the node knows of consensus comes through the
//! driver, what it heard from peers from the peer book. A single node says it is not a cluster.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::peer::PeerBook;
use crate::cluster::StateRole;
use crate::core::CoreError;
use crate::driver::CoreHandle;
use crate::proto as pb;

#[derive(Clone)]
pub struct ClusterStatus {
    pub core: CoreHandle,
    /// None on a single node.
    pub book: Option<Arc<PeerBook>>,
}

fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate | StateRole::PreCandidate => "candidate",
    }
}

impl ClusterStatus {
    /// The node's view of the cluster, as ClusterService.Status answers it (the dashboard shows
    /// the same); None on a single node.
    pub async fn answer(&self) -> Result<Option<pb::ClusterStatusResponse>, CoreError> {
        let Some(book) = self.book.as_ref() else {
            return Ok(None);
        };
        let Some(view) = self.core.cluster_status().await? else {
            return Ok(None);
        };
        let me = view.status;
        let members = (view.members.iter())
            .map(|member| {
                let (applied_index, ago) = if member.id == me.id {
                    (me.applied, Some(std::time::Duration::ZERO))
                } else {
                    book.last_heard(member.id)
                };
                let role = match () {
                    _ if member.id == me.id && member.voter => role_name(me.role),
                    _ if !member.voter => "learner",
                    _ if member.id == me.leader => "leader",
                    _ => "follower",
                };
                pb::ClusterMember {
                    id: member.id,
                    peer_addr: book.members.members.get(&member.id).cloned().unwrap_or_default(),
                    role: role.to_string(),
                    voter: member.voter,
                    applied_index,
                    last_heard_ms: ago.map(|ago| ago.as_millis() as u64),
                }
            })
            .collect();
        Ok(Some(pb::ClusterStatusResponse {
            node_id: me.id,
            leader: me.leader,
            term: me.term,
            commit_index: me.commit,
            applied_index: me.applied,
            members,
        }))
    }
}

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for ClusterStatus {
    async fn status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        match self.answer().await.map_err(convert::status)? {
            Some(answer) => Ok(Response::new(answer)),
            None => Err(Status::failed_precondition(
                "this daemon runs as a single node (started without --initial-cluster)",
            )),
        }
    }
}
