"""Policy side: backends behind one small interface, and the loop that serves them from Redis."""
