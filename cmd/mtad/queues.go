package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/mtad/mtad/internal/admin"
	"github.com/mtad/mtad/internal/scheduler"
)

// adminQueues adapts the scheduler to the admin API's Queues: the
// scheduler answers the views and lists; this maps the queries across
// and its errors to the API's (a refused parameter, an unknown id).
type adminQueues struct{ s *scheduler.Scheduler }

// QueueView is admin.Queues'.
func (a adminQueues) QueueView(q admin.QueueQuery) (any, error) {
	p, err := a.s.QueueView(scheduler.ViewQuery{By: q.By, Sort: q.Sort, Desc: q.Desc, Limit: q.Limit, Offset: q.Offset,
		Domain: q.Domain, Provider: q.Provider, Binding: q.Binding})
	return p, queuesErr(err)
}

// Messages is admin.Queues'.
func (a adminQueues) Messages(q admin.MessageQuery) (any, error) {
	p, err := a.s.Messages(scheduler.MessageQuery{Domain: q.Domain, Binding: q.Binding, Sender: q.Sender, Limit: q.Limit, After: q.After})
	return p, queuesErr(err)
}

// Message is admin.Queues'.
func (a adminQueues) Message(id string) (any, error) {
	m, err := a.s.Message(id)
	return m, queuesErr(err)
}

// MessageBody is admin.Queues'.
func (a adminQueues) MessageBody(id string) (io.ReadCloser, int64, error) {
	br, err := a.s.MessageBody(id)
	if err != nil {
		return nil, 0, queuesErr(err)
	}
	return br, br.Size(), nil
}

// queuesErr maps the scheduler's query and lookup errors to the admin
// API's.
func queuesErr(err error) error {
	var qe *scheduler.QueryError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &qe):
		return &admin.ParamError{Param: qe.Param, Msg: qe.Msg}
	case errors.Is(err, scheduler.ErrNotQueued):
		return fmt.Errorf("%w: %w", admin.ErrNotQueued, err)
	}
	return err
}
