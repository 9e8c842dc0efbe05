"""`inspector ui`: the operator's page of alerts with their evidence, and the feedback it writes."""
