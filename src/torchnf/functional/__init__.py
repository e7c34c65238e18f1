"""Pure tensor maths, no modules."""
