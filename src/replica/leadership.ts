// Who leads, as one replica sees it: leader changes and lost elections logged
// with why (timeout or transfer, pre-vote and vote tallies), the status
// page's events, and proposals retried when a new leader appears.

import { Role, type SoftState } from '../raft/rawnode.ts';
import type { ElectionRecord, VoteTally } from '../raft/raft.ts';
import type { ReplicaCore as Replica } from './core.ts';

export class Leadership {
  private lastLeader = '';
  private lastRole: Role = Role.Follower;

  constructor(private readonly r: Replica) {}

  onSoftState(ss: SoftState): void {
    const previousRole = this.lastRole;
    this.lastRole = ss.role;
    const election = this.r.raw.lastElection();
    if ((previousRole === Role.Candidate || previousRole === Role.PreCandidate) && ss.role === Role.Follower && election) {
      // A lost pre-vote repeats every timeout while a live leader is out of reach: debug, not info.
      const lost = previousRole === Role.PreCandidate ? election.preVote : election.vote;
      if (lost?.outcome === 'lost') {
        if (previousRole === Role.Candidate) this.r.notice('info', describeElection(election), 'election lost');
        else this.r.logger.debug(describeElection(election), 'pre-vote lost');
      }
    }
    if (ss.lead !== this.lastLeader) {
      const previous = this.lastLeader;
      this.lastLeader = ss.lead;
      const term = this.r.raw.basicStatus().term;
      if (ss.lead === this.r.nodeId) {
        // Why this replica campaigned (timeout or transfer) and who voted for it.
        this.r.notice('info', { ...(election ? describeElection(election) : { term }), previous }, 'became leader');
      } else {
        this.r.notice('info', { leader: ss.lead, previous, role: ss.role, term }, ss.lead === '' ? 'leader lost' : 'leader changed');
      }
      this.r.emit('leaderChange', { leader: ss.lead, term });
      // The new leader may never have seen what the old one was given.
      if (ss.lead !== '') this.r.session.retryAll();
    }
  }
}

/** An election for one log line: {term, cause: 'timeout', preVote: 'won: granted node1,node2; rejected node3', vote: …}. */
function describeElection(e: ElectionRecord): Record<string, unknown> {
  const tally = (v: VoteTally | undefined) =>
    v && `${v.outcome}: granted ${v.granted.join(',') || 'none'}${v.rejected.length > 0 ? `; rejected ${v.rejected.join(',')}` : ''}`;
  return { term: e.term, cause: e.cause, ...(e.preVote ? { preVote: tally(e.preVote) } : {}), ...(e.vote ? { vote: tally(e.vote) } : {}) };
}
