package catalog

import "slices"

// TenantState is a tenant's lifecycle state. See DESIGN.md for what the edge
// and the SDK do in each.
type TenantState string

// Tenant states.
const (
	StateProvisioning TenantState = "provisioning"
	StateActive       TenantState = "active"
	StateSuspended    TenantState = "suspended"
	StateDeactivated  TenantState = "deactivated"
	StateDeleted      TenantState = "deleted"
	StatePurged       TenantState = "purged"
	StateFailed       TenantState = "failed"
	StateMoving       TenantState = "moving"
	StateRestoring    TenantState = "restoring"
)

// TenantStates lists every state, in lifecycle order.
var TenantStates = []TenantState{
	StateProvisioning, StateActive, StateSuspended, StateDeactivated, StateDeleted,
	StatePurged, StateFailed, StateMoving, StateRestoring,
}

// Valid reports whether s is a known state.
func (s TenantState) Valid() bool { return slices.Contains(TenantStates, s) }

// Transitions is the tenant state machine: for each state, the states it may
// move to. The control database enforces the same table (tenant_transitions);
// TestTransitionsMatchDatabase keeps the two equal.
var Transitions = map[TenantState][]TenantState{
	StateProvisioning: {StateActive, StateFailed},
	StateFailed:       {StateProvisioning, StateDeleted},
	StateActive:       {StateSuspended, StateDeactivated, StateDeleted, StateMoving, StateRestoring},
	StateSuspended:    {StateActive, StateDeactivated, StateDeleted, StateRestoring},
	StateDeactivated:  {StateActive, StateDeleted, StateRestoring},
	StateDeleted:      {StateActive, StateSuspended, StateDeactivated, StateFailed, StatePurged},
	StateMoving:       {StateActive},
	StateRestoring:    {StateActive, StateSuspended, StateDeactivated},
	// A restore from backups brings a purged tenant back.
	StatePurged: {StateActive, StateSuspended, StateDeactivated},
}

// CanTransition reports whether a tenant may move from one state to another.
func CanTransition(from, to TenantState) bool {
	return slices.Contains(Transitions[from], to)
}

// Action is an operator-facing lifecycle verb.
type Action string

// Lifecycle actions.
const (
	ActionSuspend    Action = "suspend"
	ActionResume     Action = "resume"
	ActionDeactivate Action = "deactivate"
	ActionDelete     Action = "delete"
	ActionUndelete   Action = "undelete"
	ActionPurge      Action = "purge"
	ActionRetry      Action = "retry"
)

// Actions lists the lifecycle actions in the order the CLI shows them.
var Actions = []Action{
	ActionSuspend, ActionResume, ActionDeactivate, ActionDelete, ActionUndelete, ActionPurge, ActionRetry,
}

// ActionSources gives, per action, the states it applies to. The target
// state follows from the action (undelete returns to the state the tenant
// had before it was deleted; purge ends in purged only after its databases
// are dropped, so the tenant stays deleted while that runs).
var ActionSources = map[Action][]TenantState{
	ActionSuspend:    {StateActive},
	ActionResume:     {StateSuspended, StateDeactivated},
	ActionDeactivate: {StateActive, StateSuspended},
	ActionDelete:     {StateActive, StateSuspended, StateDeactivated, StateFailed},
	ActionUndelete:   {StateDeleted},
	ActionPurge:      {StateDeleted},
	ActionRetry:      {StateFailed},
}

// ParseAction returns the Action named s.
func ParseAction(s string) (Action, bool) {
	a := Action(s)
	_, ok := ActionSources[a]
	return a, ok
}
