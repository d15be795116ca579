"""Same function as SimplerEnv's simpler_env/utils/env/observation_utils.py:1-10."""


def get_image_from_maniskill2_obs_dict(env, obs, camera_name=None):
    if camera_name is None:
        if "google_robot" in env.robot_uid:
            camera_name = "overhead_camera"
        elif "widowx" in env.robot_uid:
            camera_name = "3rd_view_camera"
        else:
            raise NotImplementedError()
    return obs["image"][camera_name]["rgb"]
