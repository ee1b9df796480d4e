//! `agentkeeper.v1.ClusterService`: the cluster as the node asked sees it (leader, term,
//! members with their roles, applied indexes and when each was last heard from), for
//! `agentkeeper ctl cluster`, the dashboard's cluster panel and clients choosing a node; and the
//! operator's membership changes.
//!
//! Architecture invariant: what the node knows of consensus and membership comes through the
//! driver; a change is decided by consensus, never here. A single node says it is not a cluster.

use tonic::{Request, Response, Status};

use super::convert;
use crate::cluster::{ClusterView, MemberChange, StateRole};
use crate::core::CoreError;
use crate::driver::CoreHandle;
use crate::proto as pb;

#[derive(Clone)]
pub struct ClusterStatus {
    pub core: CoreHandle,
    /// False on a single node.
    pub clustered: bool,
}

fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate | StateRole::PreCandidate => "candidate",
    }
}

fn not_a_cluster() -> Status {
    Status::failed_precondition("this daemon runs as a single node (started without --initial-cluster)")
}

/// The answer of `Status` from what the node sees.
pub fn status_of(view: &ClusterView) -> pb::ClusterStatusResponse {
    let me = view.status;
    let members = (view.members.iter())
        .map(|member| {
            let (applied_index, ago) = match member.heard {
                _ if member.id == me.id => (me.applied, Some(0)),
                Some((applied, ago)) => (applied, Some(ago)),
                None => (0, None),
            };
            let role = match () {
                _ if member.id == me.id && member.voter => role_name(me.role),
                _ if !member.voter => "learner",
                _ if member.id == me.leader => "leader",
                _ => "follower",
            };
            pb::ClusterMember {
                id: member.id,
                peer_addr: member.peer_addr.clone(),
                role: role.to_string(),
                voter: member.voter,
                applied_index,
                last_heard_ms: ago,
            }
        })
        .collect();
    pb::ClusterStatusResponse {
        node_id: me.id,
        leader: me.leader,
        term: me.term,
        commit_index: me.commit,
        applied_index: me.applied,
        members,
    }
}

impl ClusterStatus {
    /// The node's view of the cluster, as ClusterService.Status answers it (the dashboard shows
    /// the same); None on a single node.
    pub async fn answer(&self) -> Result<Option<pb::ClusterStatusResponse>, CoreError> {
        if !self.clustered {
            return Ok(None);
        }
        Ok(self.core.cluster_status().await?.as_ref().map(status_of))
    }

    async fn view(&self) -> Result<ClusterView, Status> {
        if !self.clustered {
            return Err(not_a_cluster());
        }
        (self.core.cluster_status().await)
            .map_err(convert::status)?
            .ok_or_else(not_a_cluster)
    }

    async fn change(&self, change: MemberChange) -> Result<Response<pb::MemberChangeResponse>, Status> {
        if !self.clustered {
            return Err(not_a_cluster());
        }
        (self.core.change_members(change).await).map_err(convert::status)?;
        let status = status_of(&self.view().await?);
        Ok(Response::new(pb::MemberChangeResponse { status: Some(status) }))
    }
}

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for ClusterStatus {
    async fn status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(status_of(&self.view().await?)))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let request = request.into_inner();
        self.change(MemberChange::Add {
            id: request.id,
            peer_addr: request.peer_addr.trim().to_string(),
        })
        .await
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        self.change(MemberChange::Remove {
            id: request.into_inner().id,
        })
        .await
    }
}
