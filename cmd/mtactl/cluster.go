package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"
)

// clusterNode is one node of GET /api/v1/cluster.
type clusterNode struct {
	Name          string    `json:"name"`
	Version       string    `json:"version"`
	Queued        int       `json:"queued"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
}

// clusterCmd: cluster [--json]. The nodes sharing limits through Redis,
// with their versions, queued messages and last heartbeat, then whether
// the node asked uses the shared limits or a fallback. While Redis does
// not answer it lists the nodes last seen and says they are stale.
func (a *app) clusterCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "cluster",
		Short: "the nodes sharing limits through Redis: version, queued, last heartbeat",
		Args:  nargs(0, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, done, err := a.get("/api/v1/cluster")
			if done {
				return err
			}
			var v struct {
				Nodes  []clusterNode `json:"nodes"`
				Stale  bool          `json:"stale"`
				Status string        `json:"status"`
			}
			if err := json.Unmarshal(b, &v); err != nil {
				return fmt.Errorf("cluster: the answer is not a node list: %w", err)
			}
			rows := make([][]string, len(v.Nodes))
			for i, n := range v.Nodes {
				rows[i] = []string{n.Name, n.Version, strconv.Itoa(n.Queued), when(n.LastHeartbeat)}
			}
			if err := writeTable(a.out, []string{"NODE", "VERSION", "QUEUED", "LAST HEARTBEAT"}, rows); err != nil {
				return err
			}
			if v.Stale {
				// The node could not read Redis: these are the nodes it
				// saw last, and the limits line says what it does now.
				if _, err := fmt.Fprintln(a.out, "(stale: Redis unreachable)"); err != nil {
					return err
				}
			}
			_, err = fmt.Fprintf(a.out, "\nlimits: %s\n", v.Status)
			return err
		},
	}
}
