package federation

// WithAuthEvents exposes withAuthEvents to the external tests.
var WithAuthEvents = (*Service).withAuthEvents
