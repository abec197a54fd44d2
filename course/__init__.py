"""The course: lessons (Markdown), exercises and the checker that grades them."""
