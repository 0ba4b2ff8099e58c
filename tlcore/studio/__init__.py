"""What the app keeps and shows: a user's project and its runs, the projects live in this server, the class
(lesson, challenge, the class as the lab), the report and the web export, the charts pages and report share."""
