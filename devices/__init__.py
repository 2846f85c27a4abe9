"""The device contract shared by the agent, the aggregator and the simulators.

`devices.model` holds the messages, `devices.wire` turns them into bytes and back, and
`devices.drivers` reads real sensors. This package imports nothing from edge/, cloud/ or
simulators/.
"""
