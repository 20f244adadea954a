package config

// PushConfig configures push notifications (delivery to push gateways).
type PushConfig struct {
	AllowPrivate bool `yaml:"allow_private" doc:"Allow push gateway URLs that resolve to loopback, private and link-local addresses. Gateways are chosen by clients, so this is off except for test networks and private deployments."`
}
